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
from kbundle.container.reader import read_head
from kbundle.pipelines.verify import verified_scan
from kbundle.signing.signatures import SignaturePolicy

__all__ = ["show_code"]


def show_code(bundle: str | os.PathLike[str], name: str | None = None) -> list[CodeListing]:
    """The bundled code of every custom object (or of ``name``), for review."""
    path = Path(bundle)
    select_objects(read_head(path).manifest, name)  # an unknown name fails before extracting
    with tempfile.TemporaryDirectory(prefix="kbundle-code-") as private:
        directory = Path(private) / "bundle"
        directory.mkdir()
        report = verified_scan(
            path, expect=None, policy=SignaturePolicy.create(None, False), extract_to=directory
        )
        return code_listings(directory, report.head.manifest, name)
