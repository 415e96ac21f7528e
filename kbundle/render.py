"""Human-readable text for a bundle's manifest (what ``kbundle inspect`` prints).

Pure formatting: takes records, returns a string; never prints. Stable: the text may change
between releases; scripts should use ``--json``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kbundle.archive import BundleHead
from kbundle.findings import Severity
from kbundle.manifest import TensorSpec
from kbundle.signing import signer_ids

if TYPE_CHECKING:
    from kbundle.compat import CompatReport

__all__ = ["render_compat", "render_manifest"]

# Table cells longer than this are cut with an ellipsis so that a row fits a terminal line;
# the full values are in --json.
_CELL_WIDTH = 34


def _specs(specs: list[TensorSpec] | None) -> str:
    if not specs:
        return "unknown"
    return ", ".join(f"{s.name or '?'} {s.shape} {s.dtype or ''}".strip() for s in specs)


def _signers(signature: bytes | None) -> str:
    if signature is None:
        return "no (integrity-checked, not signed)"
    signers = signer_ids(signature)
    if isinstance(signers, str):
        return f"unreadable signature member ({signers}); verify will refuse this bundle"
    return f"by {', '.join(signers)} (not checked by inspect; run 'kbundle verify')"


def render_manifest(head: BundleHead) -> str:
    manifest = head.manifest
    model = manifest.model
    env = manifest.environment
    lines = [
        f"bundle      {head.digest}",
        f"format      kbundle {manifest.format_version}, "
        f"written by {manifest.generator} at {manifest.created}",
        f"signed      {_signers(head.signature)}",
        (
            f"model       {model.class_name or '?'} {model.name or ''} "
            f"({model.format}, {model.path})"
        ).rstrip(),
        f"parameters  {model.parameter_count if model.parameter_count is not None else 'unknown'}",
        f"inputs      {_specs(model.inputs)}",
        f"outputs     {_specs(model.outputs)}",
    ]
    if model.saved_by:
        lines.append(
            "saved by    " + ", ".join(f"{k}={v}" for k, v in sorted(model.saved_by.items()))
        )
    lines.append(
        f"python      {env.python.implementation} {env.python.version} "
        f"(pickle protocol {env.python.pickle_protocol})"
    )
    lines.append(
        (
            f"platform    {env.platform.system} {env.platform.machine} {env.platform.libc or ''}"
        ).rstrip()
    )
    if env.tensorflow:
        tf = env.tensorflow
        build = ", ".join(f"{k}={v}" for k, v in sorted(tf.build_info.items())) or "unknown"
        lines.append(
            f"tensorflow  {tf.distribution} {tf.version} ({build}; captured {tf.captured})"
        )
    else:
        lines.append("tensorflow  not installed")
    if env.keras:
        k = env.keras
        lines.append(
            f"keras       {k.distribution} {k.version} "
            f"(Keras {k.major}, backend {k.backend}, floatx {k.floatx})"
        )
    lines.append(f"gpus        {', '.join(env.gpus) or 'none'}")
    lines.append(f"libraries   {', '.join(f'{n} {v}' for n, v in env.libraries.items())}")
    lines.append(f"installed   {len(env.distributions)} distributions")
    if manifest.custom_objects:
        lines.append("custom objects:")
        for obj in manifest.custom_objects:
            where = obj.requirement or obj.source_digest or (obj.pickle.path if obj.pickle else "")
            lines.append(
                f"  {obj.name:24} {obj.kind:12} {obj.transport:12} "
                f"{obj.module}.{obj.qualname} {where}"
            )
    if manifest.requirements:
        req = manifest.requirements
        lines.append(
            f"requirements {req.requirements}"
            + (
                f", lock {req.lock} ({'hashed' if req.lock_hashed else 'unhashed'})"
                if req.lock
                else ""
            )
        )
    if manifest.probe:
        lines.append(
            f"probe       {manifest.probe.inputs} "
            f"(rtol {manifest.probe.rtol}, atol {manifest.probe.atol})"
        )
    lines.append(f"members     {len(manifest.members)} ({manifest.payload_size} bytes):")
    for member in manifest.members:
        if member.type == "dir":
            lines.append(f"  {'':>12}  {'dir':71}  {member.path}/")
        else:
            lines.append(f"  {member.size:>12}  {member.digest}  {member.path}")
    return "\n".join(lines)


def _cell(value: str | None) -> str:
    text = "-" if value is None else value
    return text if len(text) <= _CELL_WIDTH else text[: _CELL_WIDTH - 3] + "..."


def render_compat(report: CompatReport) -> str:
    """The ``kbundle check`` text: a table of every field, then why/fix per difference, verdict."""
    header = ("FIELD", "RECORDED", "CURRENT", "SEVERITY")
    rows = [header]
    rows += [
        (f.location, _cell(f.expected), _cell(f.actual), str(f.severity)) for f in report.findings
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True))
        + "  "
        + row[3]
        for row in rows
    ]
    differences = [f for f in report.findings if f.severity > Severity.OK]
    if differences:
        lines.append("")
    for finding in differences:
        lines.append(f"{finding.location} [{finding.severity}]: {finding.problem}")
        lines.extend(finding.explanation("  "))
    policy = report.policy
    source = f" from {policy.config}" if policy.config else ""
    lines.append("")
    lines.append(f"verdict: {report.summary()} (policy {policy.name}{source})")
    return "\n".join(lines)
