"""The ``kbundle`` command line (``kbundle.cli:main``).

Importing this package registers every command with the group in kbundle.cli.app; the
commands live by concern in this package. Stable: commands, options and exit codes are public.
"""

from __future__ import annotations

from kbundle.cli import diff, doctor, env, pack, read, signing  # noqa: F401  (registers commands)
from kbundle.cli.app import EXIT_CODES, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, main

__all__ = ["EXIT_CODES", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_OK", "main"]

if __name__ == "__main__":  # pragma: no cover
    main()
