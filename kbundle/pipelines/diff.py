"""``kbundle diff``: what differs between two bundles, section by section.

Sections, in order: ``model`` (what the manifest says the model is), ``architecture`` (layers
added, removed or changed, from the model configs), ``weights`` (each weight dataset that
differs, with how many values and by how much), ``members`` (every payload file by digest),
``custom_objects`` (records, and bundled source as a unified diff), ``environment`` (the
fields of the compatibility rule engine ``kbundle check`` uses, the first bundle's environment
as recorded and the second's as current), ``assets``, ``metadata`` (labels) and ``notes``
(when and how each bundle was made: creation time, generator, provenance, the save time the
model file records, other installed distributions). Notes are shown but do not make two
bundles different: two packs of one model are equal.

Both bundles are verified into private temporary directories first, and everything is read
from those files: configs as JSON, weights through h5py after the pre-load checks, source
as text. Nothing is imported, unpickled or loaded. ``deep=False`` compares the manifests only
(no verification, no architecture, dataset or source diff). Stable: ``diff`` and
``BundleDiff`` are public API; the wording of details may change.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kbundle.container.manifest import CustomObject, Manifest, Member
from kbundle.container.reader import BundleHead
from kbundle.env.rules import compare_environments, resolve_policy
from kbundle.env.rules.policy import Policy
from kbundle.errors import ModelFileError
from kbundle.findings import Severity
from kbundle.pipelines.verify import StorageOptions, read_bundle_head, reading, verified_scan
from kbundle.signing.signatures import SignaturePolicy
from kbundle.storage.locations import parse_location
from kbundle.storage.mlflow_artifacts import local_bundle

__all__ = ["SECTIONS", "BundleDiff", "Change", "diff"]

SECTIONS = (
    "model",
    "architecture",
    "weights",
    "members",
    "custom_objects",
    "environment",
    "assets",
    "metadata",
    "notes",
)
# Bundled source larger than this is compared by digest only: real custom-object modules are
# a few KiB, and a unified diff of megabytes helps nobody (and would be read into memory).
MAX_DIFF_SOURCE_BYTES = 1024 * 1024
# Lines of unified diff kept per file; the rest is summarised.
MAX_DIFF_LINES = 400
# Values shown in before/after cells are cut to this length (--json keeps what was shown).
_VALUE_WIDTH = 100
# What a .keras file records about its own save, mirrored in the manifest's model.saved_by:
# a difference there is reported as saved_by.* and does not make the model file differ.
_SAVE_RECORD = "metadata.json"
# saved_by keys that only say when a file was saved.
_SAVE_TIME_KEYS = frozenset({"date_saved"})


@dataclass(frozen=True, kw_only=True, slots=True)
class Change:
    """One difference: in which section, what kind (``added``, ``removed``, ``changed``),
    where, the two sides, and a detail (values that differ, a unified diff, why an
    environment field matters). ``counts`` is False for notes, which do not make the bundles
    different; ``severity`` is the rule engine's verdict for an environment field."""

    section: str
    kind: str
    location: str
    before: str | None = None
    after: str | None = None
    detail: str | None = None
    severity: Severity | None = None
    counts: bool = True

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["severity"] = str(self.severity) if self.severity is not None else None
        return data


@dataclass(frozen=True, kw_only=True, slots=True)
class DiffSide:
    """One of the two bundles compared."""

    bundle: str
    digest: str
    format_version: str
    created: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True, slots=True)
class BundleDiff:
    """Every difference between bundle ``before`` and bundle ``after``.

    ``equal`` when no change counts (notes aside); ``identical`` when the digests are the
    same. ``verified`` is False for a manifest-only comparison (``deep=False``), whose
    manifests were read but not checked against the payload.
    """

    before: DiffSide
    after: DiffSide
    changes: tuple[Change, ...] = ()
    verified: bool = True
    policy: str = "default"

    @property
    def equal(self) -> bool:
        return not any(change.counts for change in self.changes)

    @property
    def identical(self) -> bool:
        return self.before.digest == self.after.digest

    def section(self, name: str) -> list[Change]:
        return [change for change in self.changes if change.section == name]

    def differing_sections(self) -> list[str]:
        return [name for name in SECTIONS if any(c.counts for c in self.section(name))]

    def to_dict(self) -> dict[str, Any]:
        """The ``kbundle diff --json`` shape."""
        return {
            "ok": True,
            "equal": self.equal,
            "identical": self.identical,
            "verified": self.verified,
            "policy": self.policy,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "differing_sections": self.differing_sections(),
            "changes": [change.to_dict() for change in self.changes],
        }


def diff(
    before: str | os.PathLike[str],
    after: str | os.PathLike[str],
    *,
    deep: bool = True,
    policy: str | None = None,
    severity: Iterable[str] = (),
    storage_options: StorageOptions | None = None,
) -> BundleDiff:
    """Compare two bundles (paths, URLs or MLflow URIs as :func:`kbundle.load` takes them;
    ``storage_options`` go to a URL's filesystem).

    Both are verified first (an intact bundle is required: :class:`~kbundle.IntegrityError`
    otherwise); ``deep=False`` reads only the two manifests. The environment is compared by
    the rule engine of :func:`kbundle.check` under ``policy`` and ``severity`` overrides, with
    ``before`` as recorded and ``after`` as current.
    """
    chosen = resolve_policy(policy, severity)
    with local_bundle(before) as before_given, local_bundle(after) as after_given:
        locations = [
            parse_location(given, storage_options) for given in (before_given, after_given)
        ]
        if not deep:
            pair = read_bundle_head(locations[0]), read_bundle_head(locations[1])
            return _Comparison(pair, None, chosen).result(str(before), str(after), False)
        with tempfile.TemporaryDirectory(prefix="kbundle-diff-") as private:
            directories = Path(private) / "before", Path(private) / "after"
            heads: list[BundleHead] = []
            for location, directory in zip(locations, directories, strict=True):
                directory.mkdir()
                unsigned_ok = SignaturePolicy.create(None, False)
                with reading(location, None) as opened:
                    report = verified_scan(
                        opened, expect=None, policy=unsigned_ok, extract_to=directory
                    )
                heads.append(report.head)
            comparison = _Comparison((heads[0], heads[1]), directories, chosen)
            return comparison.result(str(before), str(after), True)


def _shown(value: Any) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
    return text if len(text) <= _VALUE_WIDTH else text[: _VALUE_WIDTH - 3] + "..."


def _pairs(before: dict[str, Any], after: dict[str, Any]) -> Iterator[tuple[str, str, Any, Any]]:
    """(kind, key, before, after) for every key whose value differs, in sorted key order."""
    for key in sorted(before.keys() | after.keys()):
        old, new = before.get(key), after.get(key)
        if key not in after:
            yield "removed", key, old, None
        elif key not in before:
            yield "added", key, None, new
        elif old != new:
            yield "changed", key, old, new


class _Comparison:
    """Two bundle heads (and their verified files when deep), compared section by section."""

    def __init__(
        self,
        heads: tuple[BundleHead, BundleHead],
        directories: tuple[Path, Path] | None,
        policy: Policy,
    ) -> None:
        self.old, self.new = heads[0].manifest, heads[1].manifest
        self.heads = heads
        self.directories = directories
        self.policy = policy
        self.changes: list[Change] = []

    def result(self, before: str, after: str, verified: bool) -> BundleDiff:
        self._model()
        files = self._checked_model_files() if self._model_members_differ() else None
        self._members(files)
        if files is not None:
            self._model_files(files)
        self._custom_objects()
        self._environment()
        self._assets()
        self._metadata()
        self._notes()
        order = {name: index for index, name in enumerate(SECTIONS)}
        changes = sorted(self.changes, key=lambda change: order[change.section])
        sides = [
            DiffSide(
                bundle=name,
                digest=head.digest,
                format_version=head.manifest.format_version,
                created=head.manifest.created,
            )
            for name, head in zip((before, after), self.heads, strict=True)
        ]
        return BundleDiff(
            before=sides[0],
            after=sides[1],
            changes=tuple(changes),
            verified=verified,
            policy=self.policy.name,
        )

    def add(self, section: str, kind: str, location: str, old: Any, new: Any, **extra: Any) -> None:
        self.changes.append(
            Change(
                section=section,
                kind=kind,
                location=location,
                before=_shown(old),
                after=_shown(new),
                **extra,
            )
        )

    # -- model and members -------------------------------------------------------------------

    def _model(self) -> None:
        old = dataclasses.asdict(self.old.model)
        new = dataclasses.asdict(self.new.model)
        old_saved, new_saved = old.pop("saved_by"), new.pop("saved_by")
        for kind, key, before, after in _pairs(old, new):
            self.add("model", kind, f"model.{key}", before, after)
        for kind, key, before, after in _pairs(old_saved, new_saved):
            section = "notes" if key in _SAVE_TIME_KEYS else "model"
            counts = key not in _SAVE_TIME_KEYS
            self.add(section, kind, f"model.saved_by.{key}", before, after, counts=counts)

    def _model_members_differ(self) -> bool:
        def model_members(manifest: Manifest) -> dict[str, Member]:
            return {m.path: m for m in manifest.members if m.path.startswith("model/")}

        return self.old.model.format != self.new.model.format or model_members(
            self.old
        ) != model_members(self.new)

    def _checked_model_files(self) -> list[tuple[Path, str]] | None:
        """Both verified model files, after the pre-load checks (a hostile zip or HDF5 file
        is refused before it is read); None for a manifest-only comparison."""
        if self.directories is None:
            return None
        from kbundle.models.checks import require_sound_model

        files = []
        for directory, manifest in zip(self.directories, (self.old, self.new), strict=True):
            path = directory / manifest.model.path
            require_sound_model(
                path,
                manifest.model.format,
                error=ModelFileError,
                label=manifest.model.path,
                hint="run 'kbundle doctor' on the bundle",
            )
            files.append((path, manifest.model.format))
        return files

    def _members(self, files: list[tuple[Path, str]] | None) -> None:
        """Every member by path; a changed ``.keras`` file says which of its entries differ."""
        old = {m.path: m for m in self.old.members}
        new = {m.path: m for m in self.new.members}
        for kind, path, before, after in _pairs(old, new):
            counts, detail = True, None
            if kind == "changed" and files and path == self.old.model.path == self.new.model.path:
                counts, detail = _model_file_change(files)
            self.add(
                "members",
                kind,
                path,
                _member_text(before),
                _member_text(after),
                counts=counts,
                detail=detail,
            )

    def _model_files(self, files: list[tuple[Path, str]]) -> None:
        """Architecture and weights, from the checked model files."""
        from kbundle.models.compare import architecture_changes, dataset_changes
        from kbundle.models.formats import read_model_config

        configs = [read_model_config(path, fmt) for path, fmt in files]
        for change in architecture_changes(configs[0], configs[1]):
            self.add("architecture", change.kind, change.location, change.before, change.after)
        datasets = dataset_changes(files[0][0], files[0][1], files[1][0], files[1][1])
        for item in datasets or []:
            detail = None
            if item.differing is not None:
                detail = f"{item.differing} of {item.total} values differ"
                if item.max_abs is not None:
                    detail += f", max |after - before| {item.max_abs:.6g}"
            self.add("weights", item.kind, item.name, item.before, item.after, detail=detail)

    # -- custom objects ----------------------------------------------------------------------

    def _custom_objects(self) -> None:
        old = {o.name: o for o in self.old.custom_objects}
        new = {o.name: o for o in self.new.custom_objects}
        for kind, name, before, after in _pairs(old, new):
            if kind != "changed":
                where = f"custom_objects.{name}"
                self.add("custom_objects", kind, where, _object_text(before), _object_text(after))
        for name in sorted(old.keys() & new.keys()):
            # Equal records may still carry different files: compared member by member.
            where = f"custom_objects.{name}"
            before, after = old[name], new[name]
            for field_kind, key, one, two in _pairs(_record_fields(before), _record_fields(after)):
                self.add("custom_objects", field_kind, f"{where}.{key}", one, two)
            self._source_changes(where, before, after)

    def _source_changes(self, where: str, old: CustomObject, new: CustomObject) -> None:
        old_files = {s.path: self.old.member(s.path) for s in old.sources}
        new_files = {s.path: self.new.member(s.path) for s in new.sources}
        for kind, path, before, after in _pairs(old_files, new_files):
            detail = self._unified(path, before, after) if self.directories else None
            self.add(
                "custom_objects",
                kind,
                f"{where}.sources.{path}",
                _member_text(before),
                _member_text(after),
                detail=detail,
            )
        if old.review_source != new.review_source and old.transport == new.transport == "pickle":
            detail = _unified_text(
                old.review_source or "", new.review_source or "", f"{where} (pickled)"
            )
            self.add(
                "custom_objects", "changed", f"{where}.review_source", "...", "...", detail=detail
            )

    def _unified(self, path: str, old: Member | None, new: Member | None) -> str | None:
        assert self.directories is not None
        texts = []
        for member, directory in zip((old, new), self.directories, strict=True):
            if member is None:
                texts.append("")
                continue
            if (member.size or 0) > MAX_DIFF_SOURCE_BYTES:
                return f"larger than {MAX_DIFF_SOURCE_BYTES} bytes: compared by digest only"
            texts.append(_source_text(directory / member.path))
        return _unified_text(texts[0], texts[1], path)

    # -- environment, assets, metadata, notes ------------------------------------------------

    def _environment(self) -> None:
        findings = compare_environments(
            self.old.environment, self.new.environment, manifest=self.old, policy=self.policy
        )
        for finding in findings:
            if finding.expected == finding.actual:
                continue
            self.add(
                "environment",
                "changed",
                finding.location,
                finding.expected,
                finding.actual,
                detail=finding.why or finding.problem,
                severity=finding.severity,
            )
        reported = {f.location.partition(".")[2] for f in findings if f.location.count(".")}
        for kind, name, before, after in _pairs(
            self.old.environment.distributions, self.new.environment.distributions
        ):
            if name not in reported:
                self.add("notes", kind, f"installed.{name}", before, after, counts=False)

    def _assets(self) -> None:
        old = {a.name: _tree(self.old, a.path) for a in self.old.assets}
        new = {a.name: _tree(self.new, a.path) for a in self.new.assets}
        for kind, name, before, after in _pairs(old, new):
            detail = None
            if kind == "changed":
                changed = [key for _, key, _, _ in _pairs(before, after)]
                detail = f"differs in: {', '.join(changed[:5])}" + (
                    f" and {len(changed) - 5} more" if len(changed) > 5 else ""
                )
            self.add(
                "assets",
                kind,
                f"assets.{name}",
                _tree_text(before),
                _tree_text(after),
                detail=detail,
            )

    def _metadata(self) -> None:
        old = self.old.metadata.labels if self.old.metadata else {}
        new = self.new.metadata.labels if self.new.metadata else {}
        for kind, key, before, after in _pairs(old, new):
            self.add("metadata", kind, f"labels.{key}", before, after)

    def _notes(self) -> None:
        for key in ("format_version", "generator", "created"):
            before, after = getattr(self.old, key), getattr(self.new, key)
            if before != after:
                self.add("notes", "changed", key, before, after, counts=False)
        old = _provenance(self.old)
        new = _provenance(self.new)
        for kind, key, before, after in _pairs(old, new):
            self.add("notes", kind, f"provenance.{key}", before, after, counts=False)


# --------------------------------------------------------------------------------------------
# Small helpers


def _model_file_change(files: list[tuple[Path, str]]) -> tuple[bool, str | None]:
    """Whether a changed model file counts, and which of its parts differ: a ``.keras`` zip
    whose only differing entry is its save record (mirrored in ``saved_by``) does not."""
    (old_file, old_format), (new_file, new_format) = files
    if old_format != "keras" or new_format != "keras":
        return True, None
    from kbundle.models.compare import zip_entry_changes

    differing = zip_entry_changes(old_file, new_file)
    detail = f"zip entries that differ: {', '.join(differing) or 'none (only the zip layout)'}"
    return not set(differing) <= {_SAVE_RECORD}, detail


def _member_text(member: Member | None) -> str | None:
    if member is None:
        return None
    if member.type == "dir":
        return "directory"
    return f"{member.digest} ({member.size} bytes)"


def _object_text(obj: CustomObject | None) -> str | None:
    return None if obj is None else f"{obj.kind} {obj.module}.{obj.qualname} ({obj.transport})"


def _record_fields(obj: CustomObject) -> dict[str, Any]:
    """A custom object's record without what is compared file by file."""
    record = dataclasses.asdict(obj)
    for key in ("sources", "review_source"):
        record.pop(key)
    return record


def _tree(manifest: Manifest, root: str) -> dict[str, Any]:
    """The members at or under ``root``: relative path -> digest (None for a directory)."""
    return {
        m.path[len(root) :].lstrip("/") or ".": m.digest
        for m in manifest.members
        if m.path == root or m.path.startswith(root + "/")
    }


def _tree_text(tree: dict[str, Any] | None) -> str | None:
    if tree is None:
        return None
    if list(tree) == ["."]:
        return str(tree["."])
    files = sum(1 for digest in tree.values() if digest is not None)
    return f"directory, {files} file{'s' if files != 1 else ''}"


def _provenance(manifest: Manifest) -> dict[str, Any]:
    if manifest.metadata is None or manifest.metadata.provenance is None:
        return {}
    return dataclasses.asdict(manifest.metadata.provenance)


def _source_text(path: Path) -> str:
    """A bundled source file as Python would decode it (undecodable bytes escaped)."""
    import importlib.util

    raw = path.read_bytes()
    try:
        return importlib.util.decode_source(raw)
    except (SyntaxError, LookupError, ValueError):
        return raw.decode("utf-8", "backslashreplace")


def _unified_text(before: str, after: str, label: str) -> str:
    lines = list(
        difflib.unified_diff(
            before.splitlines(),
            after.splitlines(),
            fromfile=f"before/{label}",
            tofile=f"after/{label}",
            lineterm="",
        )
    )
    if len(lines) > MAX_DIFF_LINES:
        dropped = len(lines) - MAX_DIFF_LINES
        lines = [*lines[:MAX_DIFF_LINES], f"... ({dropped} more lines of diff)"]
    return "\n".join(lines)
