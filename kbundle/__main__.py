"""``python -m kbundle``: the same as the ``kbundle`` command."""

from kbundle.cli import main

main()
