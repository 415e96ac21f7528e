"""Showing the code a bundle carries, for review before anyone trusts it.

The bundle is verified into a private temporary directory and the files are read from there;
nothing is imported or unpickled, and neither Keras nor TensorFlow is loaded. Stable:
``show_code`` is public API.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from kbundle.code.bundled import CodeListing, code_listings, select_objects
from kbundle.pipelines.verify import StorageOptions, reading, verified_scan
from kbundle.signing.signatures import SignaturePolicy
from kbundle.storage.locations import parse_location

__all__ = ["show_code"]


def show_code(
    bundle: str | os.PathLike[str],
    name: str | None = None,
    *,
    storage_options: StorageOptions | None = None,
) -> list[CodeListing]:
    """The bundled code of every custom object (or of ``name``), for review. ``bundle`` is a
    path, a URL (``storage_options`` go to its filesystem) or ``"-"`` for standard input."""
    with reading(parse_location(bundle, storage_options), None) as opened:
        # An unknown name fails before anything is extracted.
        select_objects(opened.reader.head().manifest, name)
        with tempfile.TemporaryDirectory(prefix="kbundle-code-") as private:
            directory = Path(private) / "bundle"
            directory.mkdir()
            report = verified_scan(
                opened,
                expect=None,
                policy=SignaturePolicy.create(None, False),
                extract_to=directory,
            )
            return code_listings(directory, report.head.manifest, name)
