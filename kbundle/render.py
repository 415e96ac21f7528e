"""Human-readable text for a bundle's manifest (what ``kbundle inspect`` prints).

Pure formatting: takes records, returns a string; never prints. Stable: the text may change
between releases; scripts should use ``--json``.
"""

from __future__ import annotations

from kbundle.archive import BundleHead
from kbundle.manifest import TensorSpec

__all__ = ["render_manifest"]


def _specs(specs: list[TensorSpec] | None) -> str:
    if not specs:
        return "unknown"
    return ", ".join(f"{s.name or '?'} {s.shape} {s.dtype or ''}".strip() for s in specs)


def render_manifest(head: BundleHead) -> str:
    manifest = head.manifest
    model = manifest.model
    env = manifest.environment
    lines = [
        f"bundle      {head.digest}",
        f"format      kbundle {manifest.format_version}, written by {manifest.generator} at {manifest.created}",
        f"signed      {'yes' if head.signature is not None else 'no (integrity-checked, not signed)'}",
        f"model       {model.class_name or '?'} {model.name or ''} ({model.format}, {model.path})".rstrip(),
        f"parameters  {model.parameter_count if model.parameter_count is not None else 'unknown'}",
        f"inputs      {_specs(model.inputs)}",
        f"outputs     {_specs(model.outputs)}",
    ]
    if model.saved_by:
        lines.append("saved by    " + ", ".join(f"{k}={v}" for k, v in sorted(model.saved_by.items())))
    lines.append(f"python      {env.python.implementation} {env.python.version} (pickle protocol {env.python.pickle_protocol})")
    lines.append(f"platform    {env.platform.system} {env.platform.machine} {env.platform.libc or ''}".rstrip())
    if env.tensorflow:
        tf = env.tensorflow
        build = ", ".join(f"{k}={v}" for k, v in sorted(tf.build_info.items())) or "unknown"
        lines.append(f"tensorflow  {tf.distribution} {tf.version} ({build}; captured {tf.captured})")
    else:
        lines.append("tensorflow  not installed")
    if env.keras:
        k = env.keras
        lines.append(f"keras       {k.distribution} {k.version} (Keras {k.major}, backend {k.backend}, floatx {k.floatx})")
    lines.append(f"gpus        {', '.join(env.gpus) or 'none'}")
    lines.append(f"libraries   {', '.join(f'{n} {v}' for n, v in env.libraries.items())}")
    lines.append(f"installed   {len(env.distributions)} distributions")
    if manifest.custom_objects:
        lines.append("custom objects:")
        for obj in manifest.custom_objects:
            where = obj.requirement or obj.source_digest or (obj.pickle.path if obj.pickle else "")
            lines.append(f"  {obj.name:24} {obj.kind:12} {obj.transport:12} {obj.module}.{obj.qualname} {where}")
    if manifest.requirements:
        req = manifest.requirements
        lines.append(f"requirements {req.requirements}" + (f", lock {req.lock} ({'hashed' if req.lock_hashed else 'unhashed'})" if req.lock else ""))
    if manifest.probe:
        lines.append(f"probe       {manifest.probe.inputs} (rtol {manifest.probe.rtol}, atol {manifest.probe.atol})")
    lines.append(f"members     {len(manifest.members)} ({manifest.payload_size} bytes):")
    for member in manifest.members:
        if member.type == "dir":
            lines.append(f"  {'':>12}  {'dir':71}  {member.path}/")
        else:
            lines.append(f"  {member.size:>12}  {member.digest}  {member.path}")
    return "\n".join(lines)
