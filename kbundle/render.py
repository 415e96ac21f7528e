"""Human-readable text for a bundle's manifest (what ``kbundle inspect`` prints).

Pure formatting: takes records, returns a string; never prints. Stable: the text may change
between releases; scripts should use ``--json``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kbundle.archive import BundleHead
from kbundle.manifest import TensorSpec

__all__ = ["render_code", "render_manifest"]

if TYPE_CHECKING:
    from kbundle.bundled_code import CodeListing
    from kbundle.manifest import CustomObject


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
            lines.append(f"  {obj.name:24} {obj.kind:12} {obj.transport:12} {obj.module}.{obj.qualname}")
            lines.append(f"  {'':24} {_object_line(obj)}")
            if obj.source_digest:
                lines.append(f"  {'':24} definition {obj.source_digest}")
            for path in [s.path for s in obj.sources] + ([obj.pickle.path] if obj.pickle else []):
                member = manifest.member(path)
                lines.append(f"  {'':24} {member.digest if member else '(unlisted)'}  {path}")
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


def _object_line(obj: CustomObject) -> str:
    """How one custom object travels, in one line."""
    if obj.transport == "distribution":
        return f"from distribution {obj.requirement}; its code is not in the bundle"
    if obj.transport == "pickle" and obj.pickle:
        p = obj.pickle
        return f"cloudpickled by value in {p.path} (Python {p.python}, cloudpickle {p.cloudpickle}, protocol {p.protocol})"
    if obj.transport == "source":
        return f"bundled source, imported as {obj.module}"
    return "provided by Keras"


def render_code(listings: list[CodeListing]) -> str:
    """The text ``kbundle show-code`` prints: each object, then each file it needs, once."""
    shown: set[str] = set()
    out: list[str] = []
    for listing in listings:
        obj = listing.obj
        out.append(f"# ==== {obj.name} ({obj.kind}): {obj.module}.{obj.qualname}")
        out.append(f"# {_object_line(obj)}")
        if obj.source_digest:
            out.append(f"# definition {obj.source_digest}")
        if obj.transport == "pickle" and obj.review_source:
            out.append("# The pickle is what runs; this is its definition as captured at pack time, for review:")
            out.append(obj.review_source.rstrip("\n"))
        elif obj.transport == "pickle":
            out.append("# The pickle is what runs; no definition text could be captured for it.")
        for file in listing.files:
            if file.path in shown:
                out.append(f"# ---- {file.path}: shown above")
                continue
            shown.add(file.path)
            module = f" (module {file.module})" if file.module else ""
            out.append(f"# ---- {file.path}{module} {file.digest or ''}".rstrip())
            out.append(file.text.rstrip("\n") or "# (empty file)")
        out.append("")
    return "\n".join(out) + ("\n" if out else "")
