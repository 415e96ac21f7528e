"""``kbundle.open``: a bundle verified into a private directory that stays, its model loaded,
and its assets where the model's code can read them.

``kbundle.load`` returns the model and removes the verified files at once; a model that
travels with a tokenizer or a label map needs those files for as long as it is used. ``open``
keeps the verified directory until :meth:`OpenedBundle.close` (or the end of a ``with``
block). What may run is decided exactly as for ``load`` (kbundle.pipelines.load). Stable:
``open`` and ``OpenedBundle`` are public API.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from kbundle.container.manifest import Manifest, Metadata
from kbundle.findings import Finding
from kbundle.pipelines.load import LoadOptions, chosen_options, load_into
from kbundle.pipelines.verify import (
    ProgressCallback,
    StorageOptions,
    VerifyReport,
    check_expected,
    reading,
)
from kbundle.signing.signatures import SignaturePolicy, TrustedKeys
from kbundle.storage.locations import parse_location
from kbundle.storage.mlflow_artifacts import local_bundle

__all__ = ["OpenedBundle", "open"]


@dataclass(eq=False)
class OpenedBundle:
    """A verified bundle in a private directory, and its model (``None`` when not loaded).

    ``assets`` maps each asset's name to its verified file or directory (``assets/NAME``
    inside ``directory``). The files exist until :meth:`close`; use it as a context manager.
    (The model file itself is consumed by the load: ``directory`` keeps the other members.)
    """

    model: Any
    directory: Path
    report: VerifyReport
    environment: list[Finding] = field(default_factory=list)
    _holder: tempfile.TemporaryDirectory[str] | None = field(default=None, repr=False)

    @property
    def manifest(self) -> Manifest:
        return self.report.head.manifest

    @property
    def digest(self) -> str:
        """The bundle's identity (``sha256:`` of its manifest)."""
        return self.report.head.digest

    @property
    def metadata(self) -> Metadata:
        """Labels and provenance (empty for a format 1.0 bundle)."""
        return self.manifest.metadata or Metadata()

    @property
    def assets(self) -> dict[str, Path]:
        """Asset name -> its verified path (a file, or a directory)."""
        return {asset.name: self.directory / asset.path for asset in self.manifest.assets}

    @property
    def closed(self) -> bool:
        return self._holder is None

    def close(self) -> None:
        """Remove the verified files (the loaded model stays usable)."""
        if self._holder is not None:
            self._holder.cleanup()
            self._holder = None

    def __enter__(self) -> OpenedBundle:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": True,
            "digest": self.digest,
            "directory": str(self.directory),
            "loaded": self.model is not None,
            "assets": {name: str(path) for name, path in self.assets.items()},
            "metadata": dataclasses.asdict(self.metadata),
            "signature": self.report.signature.to_dict() if self.report.signature else None,
            "environment": [f.to_dict() for f in self.environment],
        }


def open(  # the public name kbundle.open, as io.open
    bundle: str | os.PathLike[str],
    *,
    load_model: bool = True,
    expect: str | None = None,
    trusted_keys: TrustedKeys | None = None,
    require_signature: bool = False,
    progress: ProgressCallback | None = None,
    options: LoadOptions | None = None,
    trust_code: bool = False,
    allow_distributions: Iterable[str] = (),
    safe_mode: bool = True,
    compile: bool = True,
    ignore_env: bool = False,
    env_policy: str | None = None,
    env_severity: Iterable[str] = (),
    probe: bool = True,
    storage_options: StorageOptions | None = None,
) -> OpenedBundle:
    """Verify ``bundle`` into a private directory that stays until the result is closed, and
    load its model from there (unless ``load_model=False``).

    Takes every argument :func:`kbundle.load` takes (the same trust, environment and probe
    decisions; ``bundle`` may be a URL or an MLflow URI); returns an :class:`OpenedBundle` with the
    ``model``, the ``assets`` (name -> verified path), the ``manifest`` and its ``metadata``::

        with kbundle.open("model.kbundle") as opened:
            vocabulary = opened.assets["vocab.txt"].read_text()
            predictions = opened.model.predict(batch)

    With ``load_model=False`` nothing of the bundle runs: it is verified and extracted, and
    environment differences are reported in ``environment`` without refusing.
    """
    chosen = chosen_options(
        options,
        LoadOptions.create(
            trust_code=trust_code,
            allow_distributions=allow_distributions,
            safe_mode=safe_mode,
            compile=compile,
            ignore_env=ignore_env,
            env_policy=env_policy,
            env_severity=env_severity,
            probe=probe,
        ),
    )
    check_expected(expect)
    policy = SignaturePolicy.create(trusted_keys, require_signature)
    # On disk, not load()'s tmpfs: these files live as long as the caller keeps them.
    holder = tempfile.TemporaryDirectory(prefix="kbundle-open-")
    try:
        private = Path(holder.name)
        with (
            local_bundle(bundle) as given,
            reading(parse_location(given, storage_options), progress) as opened,
        ):
            model, report, compat = load_into(
                private, opened, chosen, expect=expect, policy=policy, load_model=load_model
            )
        # The model's large members, split out for Keras while loading: read by now.
        shutil.rmtree(private / "keras_model", ignore_errors=True)
    except BaseException:
        holder.cleanup()
        raise
    if load_model:
        compat.warn_once(str(bundle))
    return OpenedBundle(model, private / "bundle", report, list(compat.findings), holder)
