"""All human-readable text the command line prints: what may reach a terminal
(``printable``), a bundle's manifest (``kbundle inspect``), an environment check (``kbundle
check``), the code a bundle carries (``kbundle show-code``), a diagnosis (``kbundle doctor``), a
comparison (``kbundle diff``), and the small helpers (counts, sizes) the commands' summary
lines share.

Bundle content is hostile until shown otherwise, and a terminal obeys control characters: an
ESC sequence in a model name could move the cursor and forge a "signed ... (trusted)" line, a
bidi override could reorder a line of code under review. ``printable`` escapes every character
that is not printable; the renderers escape each line they build, so a value can never start a
line of its own, and the CLI escapes everything it prints once more.

Pure formatting: takes records, returns a string; never prints. Importing it is cheap (the
CLI's error path uses ``printable``). Stable: the text may change between releases; scripts
should use ``--json``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from kbundle.errors import first_sentence
from kbundle.findings import Severity

if TYPE_CHECKING:
    from kbundle.code.bundled import CodeListing
    from kbundle.container.manifest import CustomObject, Metadata, TensorSpec
    from kbundle.container.reader import BundleHead
    from kbundle.doctor.diagnose import Diagnosis
    from kbundle.env.rules import CompatReport
    from kbundle.pipelines.diff import BundleDiff, Change

__all__ = [
    "plural",
    "printable",
    "printable_lines",
    "render_compat",
    "render_diagnosis",
    "render_diff",
    "render_listings",
    "render_manifest",
    "size_text",
]

# The escapes everyone reads at a glance; every other character that is not printable is
# shown by its code point, as Python's repr() shows it.
_SHORT_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def _escape(char: str) -> str:
    short = _SHORT_ESCAPES.get(char)
    if short is not None:
        return short
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"


def printable(text: str, *, keep_newlines: bool, keep_tabs: bool = False) -> str:
    """``text`` made safe for a terminal: every character that is not printable becomes a
    visible escape (``\\x1b``, ``\\r``, ``\\u202e``, ``\\udcff``).

    Not printable means what ``str.isprintable`` says: Unicode categories Cc (C0 and C1
    controls: ESC, CR, CSI U+009B), Cf (bidi embeddings, overrides and isolates U+202A-U+202E
    and U+2066-U+2069, zero-width characters), Cs (lone surrogates, as undecodable file names
    arrive), Co (private use), Cn (unassigned, whose rendering no one can predict), Zl, Zp
    (line and paragraph separators) and Zs other than the ASCII space. ``\\n`` is kept only
    with ``keep_newlines`` (text of several lines), ``\\t`` only with ``keep_tabs`` (source
    code). A backslash is not escaped: it moves no cursor.
    """
    if keep_newlines and "\n" in text:  # line by line, so that most take the fast path
        return "\n".join(
            printable(line, keep_newlines=False, keep_tabs=keep_tabs) for line in text.split("\n")
        )
    if text.isprintable():
        return text
    return "".join(
        char if char.isprintable() or (keep_tabs and char == "\t") else _escape(char)
        for char in text
    )


def printable_lines(lines: Iterable[str]) -> str:
    """Lines joined into one text, each escaped on its own: a newline inside a line (a value
    taken from a bundle) is shown as ``\\n`` and never starts a line of its own."""
    return "\n".join(printable(line, keep_newlines=False) for line in lines)


# Table cells longer than this are cut with an ellipsis so that a row fits a terminal line;
# the full values are in --json.
_CELL_WIDTH = 34


def _specs(specs: list[TensorSpec] | None) -> str:
    if not specs:
        return "unknown"
    return ", ".join(_spec(spec) for spec in specs)


def _spec(spec: TensorSpec) -> str:
    if spec.shape is None and spec.dtype is None:
        return f"{spec.name or '?'} (shape not recorded; the probe records it)"
    return f"{spec.name or '?'} {spec.shape} {spec.dtype or ''}".strip()


def _signers(signature: bytes | None) -> str:
    if signature is None:
        return "no (integrity-checked, not signed)"
    from kbundle.container.signature_member import signer_ids

    signers = signer_ids(signature)
    if isinstance(signers, str):
        return f"unreadable signature member ({signers}); verify will refuse this bundle"
    return f"by {', '.join(signers)} (not checked by inspect; run 'kbundle verify')"


def render_manifest(head: BundleHead) -> str:
    """The ``kbundle inspect`` text: one line per fact, every line escaped."""
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
    if manifest.assets:
        shown = [
            f"{a.name}/" if (m := manifest.member(a.path)) and m.type == "dir" else a.name
            for a in manifest.assets
        ]
        lines.append(f"assets      {', '.join(shown)}")
    if manifest.metadata is not None:
        lines.extend(_metadata_lines(manifest.metadata))
    lines.append(f"members     {len(manifest.members)} ({manifest.payload_size} bytes):")
    for member in manifest.members:
        if member.type == "dir":
            lines.append(f"  {'':>12}  {'dir':71}  {member.path}/")
        else:
            lines.append(f"  {member.size:>12}  {member.digest}  {member.path}")
    return printable_lines(lines)


def _metadata_lines(metadata: Metadata) -> list[str]:
    lines = []
    if metadata.labels:
        lines.append(
            "labels      " + ", ".join(f"{k}={v}" for k, v in sorted(metadata.labels.items()))
        )
    made = metadata.provenance
    if made is not None:
        parts = []
        if made.git_commit:
            state = {True: "with changes", False: "clean", None: "state unknown"}[made.git_dirty]
            parts.append(f"git {made.git_commit} ({state})")
        if made.command:
            parts.append(f"command {' '.join(made.command)}")
        if made.hostname:
            parts.append(f"host {made.hostname}")
        lines.append(f"provenance  {'; '.join(parts) or 'nothing recorded'}")
    return lines


def _cell(value: str | None) -> str:
    # Escaped before it is measured, so that the columns line up with what is shown.
    text = "-" if value is None else printable(value, keep_newlines=False)
    return text if len(text) <= _CELL_WIDTH else text[: _CELL_WIDTH - 3] + "..."


def render_compat(report: CompatReport, *, verified: bool | None = None) -> str:
    """The ``kbundle check`` text: a table of every field, then why/fix per difference, what
    was verified (``None``: say nothing), and the verdict."""
    header = ("FIELD", "RECORDED", "CURRENT", "SEVERITY")
    rows = [header]
    rows += [
        (
            printable(f.location, keep_newlines=False),
            _cell(f.expected),
            _cell(f.actual),
            str(f.severity),
        )
        for f in report.findings
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
    if verified is not None:
        lines.append(
            "integrity: verified, every member's SHA-256 matches"
            if verified
            else "integrity: not verified (check reads only the manifest; 'kbundle verify' or "
            "'kbundle check --verify' proves the bundle intact)"
        )
    lines.append(f"verdict: {report.summary()} (policy {policy.name}{source})")
    return printable_lines(lines)


def plural(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def size_text(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{count} B"


def _object_line(obj: CustomObject) -> str:
    """How one custom object travels, in one line."""
    if obj.transport == "distribution":
        return f"from distribution {obj.requirement}; its code is not in the bundle"
    if obj.transport == "pickle" and obj.pickle:
        p = obj.pickle
        return (
            f"cloudpickled by value in {p.path} (Python {p.python}, "
            f"cloudpickle {p.cloudpickle}, protocol {p.protocol})"
        )
    if obj.transport == "source":
        return f"bundled source, imported as {obj.module}"
    return "provided by Keras"


def render_listings(listings: list[CodeListing]) -> str:
    """The text ``kbundle show-code`` prints: each object, then each file it needs, once.

    Every character that is not printable is shown escaped (``kbundle.cli.render.printable``):
    kbundle's own lines are one line each whatever the manifest says, and code keeps its
    newlines and tabs only, so an ESC sequence or a bidi control cannot hide a line of it.
    """
    shown: set[str] = set()
    out: list[str] = []

    def note(line: str) -> None:
        out.append(printable(line, keep_newlines=False))

    def code(text: str) -> None:
        out.append(printable(text, keep_newlines=True, keep_tabs=True))

    for listing in listings:
        obj = listing.obj
        note(f"# ==== {obj.name} ({obj.kind}): {obj.module}.{obj.qualname}")
        note(f"# {_object_line(obj)}")
        if obj.source_digest:
            note(f"# definition {obj.source_digest}")
        if obj.transport == "pickle" and obj.review_source:
            note(
                "# The pickle is what runs; "
                "this is its definition as captured at pack time, for review:"
            )
            code(obj.review_source.rstrip("\n"))
        elif obj.transport == "pickle":
            note("# The pickle is what runs; no definition text could be captured for it.")
        for file in listing.files:
            if file.path in shown:
                note(f"# ---- {file.path}: shown above")
                continue
            shown.add(file.path)
            module = f" (module {file.module})" if file.module else ""
            note(f"# ---- {file.path}{module} {file.digest or ''}".rstrip())
            code(file.text.rstrip("\n") or "# (empty file)")
        out.append("")
    return "\n".join(out) + ("\n" if out else "")


def render_diagnosis(diagnosis: Diagnosis) -> str:
    """The human-readable report (what ``kbundle doctor`` prints without ``--json``)."""
    from kbundle.doctor.diagnose import FAILURE_CLASSES

    maker = ", ".join(f"{k}={v}" for k, v in sorted(diagnosis.saved_by.items()))
    lines = [
        f"{'doctor':<14}{diagnosis.path} ({diagnosis.kind}, format {diagnosis.format or 'unknown'})"
    ]
    if maker:
        lines.append(f"{'saved by':<14}{maker}")
    for name in FAILURE_CLASSES:
        items = diagnosis.findings.get(name, [])
        errors = sum(1 for f in items if f.severity >= Severity.ERROR)
        summary = (
            "no problems found"
            if not items
            else f"{errors} problem(s), {len(items) - errors} note(s)"
        )
        lines.append(f"{name:<14}{summary}")
        for finding in items:
            lines.append(f"  - [{finding.severity}] {finding.describe()}")
            lines.extend(finding.explanation("      "))
    load = diagnosis.load
    if load.ok:
        outcome = f"OK with {load.loader}" + (
            f" ({first_sentence(load.note)})" if load.note else ""
        )
    elif not load.attempted and load.skipped:
        outcome = f"not attempted: {load.skipped}"
    else:
        cause = f"{load.error_type}: " if load.error_type else ""
        outcome = f"FAILED ({load.failure_class}): {cause}{first_sentence(load.error or '')}"
    lines.append(f"{'load':<14}{outcome}")
    if diagnosis.loads:
        verdict = "healthy: the model loads"
    elif diagnosis.failure_class is None:  # not tried: loading would run untrusted code
        verdict = "not loaded: it needs trust (--trust-code)"
    else:
        verdict = f"does not load: {diagnosis.failure_class}"
    lines.append(f"{'verdict':<14}{verdict}")
    # Paths, findings and the child's error text quote the model: escaped line by line.
    return printable_lines(lines)


_CHANGE_MARKS = {"added": "+", "removed": "-", "changed": "~"}


def _change_lines(change: Change) -> list[str]:
    mark = _CHANGE_MARKS.get(change.kind, "?")
    severity = f" [{change.severity}]" if change.severity is not None else ""
    if change.kind == "added":
        sides = f"{change.after}"
    elif change.kind == "removed" or change.before == change.after:
        sides = f"{change.before}"  # (the same on both sides: a dataset whose values changed)
    else:
        sides = f"{change.before} -> {change.after}"
    lines = [f"  {mark} {change.location}{severity}  {sides}"]
    if change.detail:
        # A unified diff keeps its lines (each escaped on its own, as show-code does).
        lines.extend(f"      {line}" for line in change.detail.split("\n"))
    return lines


def render_diff(result: BundleDiff, exit_code: int) -> str:
    """The ``kbundle diff`` text: both bundles, each section's changes, the notes that do not
    count, and the verdict with the exit code."""
    from kbundle.pipelines.diff import SECTIONS

    lines = []
    for label, side in (("before", result.before), ("after", result.after)):
        lines.append(
            f"{label:<7} {side.digest}  {side.bundle} "
            f"(format {side.format_version}, created {side.created})"
        )
    if not result.verified:
        lines.append("        manifests only: the payloads were not verified or compared")
    for name in SECTIONS:
        changes = result.section(name)
        if not changes:
            continue
        lines.append("")
        if name == "notes":
            lines.append("notes (how each bundle was made; they do not make the bundles differ):")
        else:
            lines.append(f"{name}: {plural(len(changes), 'change')}")
        for change in changes:
            lines.extend(_change_lines(change))
    lines.append("")
    if result.identical:
        verdict = "identical (the same bundle digest)"
    elif result.equal:
        verdict = "equal: only how they were made differs"
    else:
        verdict = f"the bundles differ in {', '.join(result.differing_sections())}"
    lines.append(f"verdict: {verdict} (exit {exit_code})")
    return printable_lines(lines)
