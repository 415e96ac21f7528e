"""The reading pipelines: inspect (manifest only), verify (every byte), unpack and load.

``verify`` and ``inspect`` never import Keras or TensorFlow. ``unpack`` and ``load`` verify
while extracting into a fresh private directory and use only the files they verified.
Stable: the function signatures are public API.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kbundle.archive import BundleHead, VerifyReport, read_head, scan_bundle
from kbundle.atomic import atomic_directory
from kbundle.errors import IntegrityError, UntrustedCodeError, UsageError
from kbundle.findings import Finding
from kbundle.names import MANIFEST_NAME

if TYPE_CHECKING:
    from kbundle.bundled_code import CodeListing

__all__ = ["LoadOptions", "UnpackResult", "inspect", "load", "show_code", "unpack", "verify"]

_DIGEST_PREFIX = "sha256:"


def _as_path(bundle: str | os.PathLike[str]) -> Path:
    return Path(bundle)


def inspect(bundle: str | os.PathLike[str]) -> BundleHead:
    """Read the manifest (and signature) only; nothing else of the bundle is read."""
    return read_head(_as_path(bundle))


def _check_expected(expect: str | None) -> None:
    if expect is None:
        return
    hexpart = expect.removeprefix(_DIGEST_PREFIX)
    if len(hexpart) != 64 or any(c not in "0123456789abcdef" for c in hexpart):
        raise UsageError(
            f"--expect must be 'sha256:' followed by 64 lowercase hex digits: {expect!r}",
            hint="copy the digest that 'kbundle pack' printed",
        )


def _raise_findings(report: VerifyReport, bundle: Path) -> None:
    if not report.findings:
        return
    first = report.findings[0]
    more = len(report.findings) - 1
    raise IntegrityError(
        f"{bundle} failed verification: {first.describe()}"
        + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else ""),
        hint=first.fix or "the bundle is corrupt or was altered; fetch an intact copy",
        findings=report.findings,
    )


def _expect_finding(report: VerifyReport, expect: str | None) -> None:
    if expect is not None and report.head.digest != _DIGEST_PREFIX + expect.removeprefix(_DIGEST_PREFIX):
        report.findings.insert(
            0,
            Finding(
                location=MANIFEST_NAME,
                problem="bundle digest differs from --expect",
                expected=_DIGEST_PREFIX + expect.removeprefix(_DIGEST_PREFIX),
                actual=report.head.digest,
                fix="this is not the bundle you pinned; check which file you were given",
            ),
        )


def verify(
    bundle: str | os.PathLike[str],
    *,
    expect: str | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> VerifyReport:
    """Check every member's size and digest, names, kinds and structure; raise on any problem.

    ``expect`` pins the bundle digest (``sha256:...``). Raises :class:`IntegrityError` listing
    every finding; returns the report when the bundle is intact.
    """
    path = _as_path(bundle)
    _check_expected(expect)
    report = scan_bundle(path, progress=_progress_adapter(progress, path))
    _expect_finding(report, expect)
    _raise_findings(report, path)
    return report


def _progress_adapter(
    progress: Callable[[int, int], None] | None, path: Path
) -> Callable[[int], None] | None:
    if progress is None:
        return None
    total = read_head(path).manifest.payload_size
    done = 0

    def advance(count: int) -> None:
        nonlocal done
        done += count
        progress(done, total)

    return advance


@dataclass(slots=True)
class UnpackResult:
    """Where the verified files are, the verification report, and the model when loaded."""

    path: Path
    report: VerifyReport
    model: Any = None
    environment: list[Finding] = field(default_factory=list)

    @property
    def model_path(self) -> Path:
        return self.path / self.report.head.manifest.model.path


def _extract_verified(
    path: Path,
    directory: Path,
    expect: str | None,
    progress: Callable[[int, int], None] | None,
) -> VerifyReport:
    report = scan_bundle(path, extract_to=directory, progress=_progress_adapter(progress, path))
    _expect_finding(report, expect)
    _raise_findings(report, path)
    (directory / MANIFEST_NAME).write_bytes(report.head.manifest_bytes)
    return report


@dataclass(frozen=True, kw_only=True, slots=True)
class LoadOptions:
    """What loading may do: run bundled code, turn Keras safe mode off, compile."""

    trust_code: bool = False
    safe_mode: bool = True
    compile: bool = True


@contextmanager
def _custom_objects(directory: Path, report: VerifyReport) -> Iterator[dict[str, Any] | None]:
    """The bundle's custom objects for Keras (``None`` when it has none); load the model inside
    the block. Call only after ``_require_trust``: this imports and unpickles bundled code."""
    manifest = report.head.manifest
    if not manifest.custom_objects:
        yield None
        return
    from kbundle import bundled_code  # noqa: PLC0415 - runs only after trust
    from kbundle.keras_registry import (  # noqa: PLC0415 - the Keras side
        preferred_objects,
        registered_object,
        registry_restored,
    )

    bundled_code.check_runnable(manifest)
    label = report.head.digest.removeprefix(_DIGEST_PREFIX)[:12]
    with registry_restored(), bundled_code.bundled_objects(
        directory, manifest, label=label, registered=registered_object
    ) as objects, preferred_objects(objects):
        yield objects


def show_code(bundle: str | os.PathLike[str], name: str | None = None) -> list[CodeListing]:
    """The bundled code of every custom object (or of ``name``), for review.

    The bundle is verified into a private temporary directory and the files are read from
    there; nothing is imported or unpickled, and neither Keras nor TensorFlow is loaded.
    """
    from kbundle.bundled_code import code_listings, select_objects  # noqa: PLC0415

    path = _as_path(bundle)
    select_objects(read_head(path).manifest, name)  # an unknown name fails before extracting
    with tempfile.TemporaryDirectory(prefix="kbundle-code-") as private:
        result = unpack(path, Path(private) / "bundle")
        return code_listings(result.path, result.report.head.manifest, name)


def _require_trust(report: VerifyReport, options: LoadOptions) -> None:
    carried = [o for o in report.head.manifest.custom_objects if o.transport in ("source", "pickle")]
    if carried and not options.trust_code:
        names = ", ".join(f"{o.name} ({o.transport})" for o in carried)
        raise UntrustedCodeError(
            f"loading would run bundled code nobody trusted: {names}",
            hint="review it with 'kbundle show-code', then pass --trust-code (trust_code=True)",
        )


def _load_verified(directory: Path, report: VerifyReport, options: LoadOptions) -> Any:
    """Load the model from files that were just verified into ``directory``."""
    from kbundle import keras_io  # noqa: PLC0415 - Keras is imported only to load

    _require_trust(report, options)
    model_path = directory / report.head.manifest.model.path
    with _custom_objects(directory, report) as objects:
        return keras_io.load_model(
            model_path, custom_objects=objects, safe_mode=options.safe_mode, compile=options.compile
        )


def unpack(
    bundle: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    force: bool = False,
    expect: str | None = None,
    load_model: bool = False,
    options: LoadOptions | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> UnpackResult:
    """Verify ``bundle`` while extracting it; ``destination`` appears only if all is intact.

    The destination holds ``kbundle.json`` and the payload (``model/...``). An existing
    destination is replaced only with ``force``. With ``load_model`` the model is loaded from
    the verified files before they are moved into place, proving that it loads.
    """
    path = _as_path(bundle)
    _check_expected(expect)
    read_head(path)  # a bad bundle fails before any directory is made
    with atomic_directory(Path(destination), force=force) as staging:
        report = _extract_verified(path, staging, expect, progress)
        model = _load_verified(staging, report, options or LoadOptions()) if load_model else None
    return UnpackResult(Path(destination), report, model)


def load(
    bundle: str | os.PathLike[str],
    *,
    expect: str | None = None,
    trust_code: bool = False,
    safe_mode: bool = True,
    compile: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> Any:
    """Verify the bundle into a private temporary directory and load the model from there.

    Returns a ``keras.Model``. Bundled code runs only with ``trust_code=True``; Keras
    ``safe_mode`` stays on unless ``safe_mode=False``.
    """
    path = _as_path(bundle)
    _check_expected(expect)
    options = LoadOptions(trust_code=trust_code, safe_mode=safe_mode, compile=compile)
    with tempfile.TemporaryDirectory(prefix="kbundle-load-") as private:
        report = _extract_verified(path, Path(private), expect, progress)
        return _load_verified(Path(private), report, options)
