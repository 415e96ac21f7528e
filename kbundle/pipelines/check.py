"""``kbundle check``: can this environment load a bundle? And the same check before a load.

Reads only the manifest and installed metadata: imports neither TensorFlow nor Keras nor
bundled code. Stable: ``check`` is public API.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from kbundle.container.manifest import Environment, Manifest
from kbundle.env.rules import CompatReport, Policy, check_manifest, resolve_policy
from kbundle.pipelines.verify import StorageOptions, read_bundle_head
from kbundle.pipelines.verify import verify as verify_bundle
from kbundle.storage.locations import parse_location

__all__ = ["check", "environment_gate"]


def check(
    bundle: str | os.PathLike[str],
    *,
    policy: str | None = None,
    severity: Iterable[str] = (),
    current: Environment | None = None,
    verify: bool = False,
    storage_options: StorageOptions | None = None,
) -> CompatReport:
    """Compare ``bundle``'s recorded environment with this one. Reads only the manifest (of a
    URL, only the first frame; ``storage_options`` go to its filesystem), so it says nothing
    about whether the bundle is intact, unless ``verify``: then every byte is verified first
    (:func:`~kbundle.verify`; an :class:`IntegrityError` on damage)."""
    if verify:
        manifest = verify_bundle(bundle, storage_options=storage_options).head.manifest
    else:
        manifest = read_bundle_head(parse_location(bundle, storage_options)).manifest
    return check_manifest(manifest, policy=resolve_policy(policy, severity), current=current)


def environment_gate(
    manifest: Manifest, policy: Policy | None, *, ignore: bool = True, what: str = "the bundle"
) -> CompatReport:
    """The check before loading: ``policy`` (None: the configured one); errors raise unless
    ``ignore``."""
    report = check_manifest(manifest, policy=policy or resolve_policy())
    if not ignore:
        report.raise_for_errors(what)
    return report
