"""Compatibility verdicts: a recorded environment against the current one, field by field.

The one rule engine: ``kbundle check``, the check before every load and ``kbundle doctor``
all ask it. Each rule looks at one field (``keras.version``, ``tensorflow.build``,
``distributions.NAME``, ...) and gives an outcome (kbundle.env.rules.base); a policy
(kbundle.env.rules.policy) turns outcomes into severities. The rules live by area: keras,
tensorflow, python, libraries, distributions, platform, and ``saved_by`` for what a model
file says about the Keras and TensorFlow that wrote it. The fields and their reasons are
documented in ``docs/compatibility.md``; ``RULES`` is the list the docs and the override
check use.

Nothing here imports TensorFlow or Keras: the current environment is captured statically.
Stable: the field names, policies and ``CompatReport`` are public; the wording of reasons may
change.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from kbundle.container.manifest import Environment, Manifest
from kbundle.env.capture import capture_environment
from kbundle.env.rules import distributions, keras, libraries, platform, python, tensorflow
from kbundle.env.rules.base import POLICIES, RULES, Context, Result
from kbundle.env.rules.policy import Policy, parse_severity_overrides, resolve_policy
from kbundle.env.rules.report import CompatReport, EnvironmentWarning
from kbundle.env.rules.saved_by import rules as saved_by_rules
from kbundle.findings import Finding

__all__ = [
    "POLICIES",
    "RULES",
    "CompatReport",
    "EnvironmentWarning",
    "Policy",
    "check_manifest",
    "compare_environments",
    "compare_saved_by",
    "parse_severity_overrides",
    "resolve_policy",
]


def check_manifest(
    manifest: Manifest, *, policy: Policy | None = None, current: Environment | None = None
) -> CompatReport:
    """Every rule on ``manifest``'s environment against ``current`` (captured when omitted)."""
    if current is None:
        current = capture_environment()
    chosen = policy or Policy()
    return CompatReport(
        findings=tuple(
            compare_environments(manifest.environment, current, manifest=manifest, policy=chosen)
        ),
        policy=chosen,
    )


def compare_environments(
    recorded: Environment,
    current: Environment,
    *,
    manifest: Manifest | None = None,
    policy: Policy | None = None,
) -> list[Finding]:
    """Every rule's finding, in a fixed order; ``manifest`` adds what the bundle carries."""
    chosen = policy or Policy()
    context = Context.of(manifest, recorded, current)
    return [chosen.finding(result) for result in _all_rules(context)]


def compare_saved_by(
    saved_by: Mapping[str, str],
    current: Environment,
    *,
    keras_version: str | None = None,
    backend: str | None = None,
    savedmodel_ops: Iterable[str] | None = None,
    policy: Policy | None = None,
) -> list[Finding]:
    """What a model file says about its maker against ``current`` (kbundle.env.rules.saved_by):
    ``kbundle doctor``'s environment findings for a plain model file."""
    chosen = policy or Policy()
    return [
        chosen.finding(result)
        for result in saved_by_rules(
            saved_by,
            current,
            keras_version=keras_version,
            backend=backend,
            savedmodel_ops=savedmodel_ops,
        )
    ]


def _all_rules(c: Context) -> Iterator[Result]:
    for area in (keras, tensorflow, python, libraries, distributions, platform):
        yield from area.rules(c)
