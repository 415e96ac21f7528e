"""The manifest (``kbundle.json``): its records, their JSON form, and the format-version gate.

Every record is a frozen dataclass. ``to_dict`` gives the JSON form (``None`` fields are kept
as ``null`` so that every field of the schema is always present); ``from_dict`` validates
types and reports the location of a bad value (``members[3].digest``). Round trip:
``Manifest.from_dict(m.to_dict()) == m`` for every manifest, and a manifest read from bytes
re-serialises to a dict equal to the one parsed, except that fields unknown to this version
are dropped (they are allowed in a newer minor version; the stored bytes stay authoritative
for the bundle's identity).

``parse_manifest`` is the only way bytes become a manifest: size cap, depth cap, duplicate
keys and non-finite numbers refused, version gate applied. Stable: format 1.1 (1.0 plus
``assets`` and ``metadata``); fields are only ever added in a minor version, and a manifest of
an older minor reads with the defaults of the fields added since.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from typing import Any, TypeVar, Union

from kbundle.container.limits import MAX_JSON_DEPTH, MAX_MANIFEST_BYTES, MAX_MEMBERS
from kbundle.container.names import collision_key, name_problem
from kbundle.errors import BundleFormatError, LimitExceededError, UnsupportedFormatVersionError

__all__ = [
    "DIGEST_ALGORITHM",
    "FORMAT_VERSION",
    "Asset",
    "CustomObject",
    "Environment",
    "KerasInfo",
    "Manifest",
    "Member",
    "Metadata",
    "ModelInfo",
    "NewerFormatWarning",
    "PickleInfo",
    "PlatformInfo",
    "ProbeInfo",
    "Provenance",
    "PythonInfo",
    "Requirements",
    "SourceFile",
    "TensorFlowInfo",
    "TensorSpec",
    "bundle_digest",
    "format_digest",
    "load_json_object",
    "parse_manifest",
    "serialize_manifest",
]

FORMAT_VERSION = "1.1"
# The only digest algorithm of format 1.0. A manifest naming another (md5, sha1, ...) is
# refused rather than checked with a weaker function.
DIGEST_ALGORITHM = "sha256"
_DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")

MODEL_FORMATS = ("keras", "keras-dir", "h5", "savedmodel")
MEMBER_TYPES = ("file", "dir")
TRANSPORTS = ("distribution", "source", "pickle", "builtin")
# A .keras zip or an HDF5 file is one file; the other formats are directories. Loading the
# wrong kind fails inside Keras (IsADirectoryError), so the reader refuses it up front.
_MODEL_MEMBER_TYPES = {"keras": "file", "h5": "file", "keras-dir": "dir", "savedmodel": "dir"}
# The fields that must reference every payload file outside model/, by area: a file nobody
# references (say code/__init__.py) would still be unpacked, and a tree with the current
# directory on sys.path imports it.
_REFERENCED_BY = {
    "code": "any custom object",
    "objects": "any custom object",
    "env": "requirements.requirements or requirements.lock",
    "probe": "probe.inputs or probe.outputs",
    "assets": "assets[].path",
}
# An asset is one top-level entry under assets/ (assets/NAME): what it is called after a load.
_ASSET_DEPTH = 2
_FORMAT_VERSION_RE = re.compile(r"[0-9]+\.[0-9]+")
# Format version numbers are small; int() of a longer digit string would raise ValueError
# (CPython refuses more than 4300 digits) instead of a finding.
_MAX_VERSION_DIGITS = 9


class NewerFormatWarning(UserWarning):
    """The bundle uses a newer minor format version; fields this reader does not know are
    ignored (and a bundle that needs them to be read is refused)."""


def format_digest(hex_digest: str) -> str:
    """``sha256:<hex>``: the one spelling of a digest in manifests and on the command line."""
    return f"{DIGEST_ALGORITHM}:{hex_digest}"


def bundle_digest(manifest_bytes: bytes) -> str:
    """The bundle's identity: the SHA-256 of the exact manifest bytes."""
    return format_digest(hashlib.sha256(manifest_bytes).hexdigest())


# --------------------------------------------------------------------------------------------
# Records


@dataclass(frozen=True, kw_only=True, slots=True)
class TensorSpec:
    """One model input or output as the model declares it (``None`` for unknown dimensions)."""

    name: str | None = None
    shape: list[int | None] | None = None
    dtype: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ModelInfo:
    """What the model is and where it lives in the bundle.

    ``saved_by`` is what the model file itself says about its maker (a ``.keras`` file's
    ``metadata.json``, an ``.h5`` root's attributes, a SavedModel's producer), which may differ
    from the packing environment.
    """

    format: str
    path: str
    class_name: str | None = None
    name: str | None = None
    inputs: list[TensorSpec] | None = None
    outputs: list[TensorSpec] | None = None
    parameter_count: int | None = None
    saved_by: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True, slots=True)
class Member:
    """One payload member: a regular file with size and digest, or a directory."""

    path: str
    type: str = "file"
    size: int | None = None
    digest: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class PythonInfo:
    version: str
    implementation: str
    pickle_protocol: int


@dataclass(frozen=True, kw_only=True, slots=True)
class PlatformInfo:
    system: str
    release: str
    machine: str
    libc: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class TensorFlowInfo:
    """The TensorFlow build. ``captured`` is ``runtime`` when TensorFlow was imported to record
    it (git version, compile flags, devices), ``static`` when read from the installed files."""

    distribution: str
    version: str
    captured: str
    git_version: str | None = None
    build_info: dict[str, Any] = field(default_factory=dict)
    compile_flags: list[str] | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class KerasInfo:
    """Keras as the loading code sees it: Keras 3 (``keras``) or Keras 2 (``tf-keras``)."""

    distribution: str
    version: str
    major: int
    backend: str | None = None
    floatx: str | None = None
    image_data_format: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Environment:
    """The environment a bundle was packed in. ``distributions`` lists every installed
    distribution (normalised name -> version); ``libraries`` the ones models depend on most."""

    python: PythonInfo
    platform: PlatformInfo
    tensorflow: TensorFlowInfo | None = None
    keras: KerasInfo | None = None
    libraries: dict[str, str] = field(default_factory=dict)
    gpus: list[str] = field(default_factory=list)
    distributions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True, slots=True)
class SourceFile:
    """A bundled source file and the module name it is imported as."""

    module: str
    path: str


@dataclass(frozen=True, kw_only=True, slots=True)
class PickleInfo:
    """A cloudpickled object and what is needed to unpickle it safely."""

    path: str
    python: str
    protocol: int
    cloudpickle: str


@dataclass(frozen=True, kw_only=True, slots=True)
class CustomObject:
    """A class or function the model needs that Keras does not provide.

    ``name`` is the name Keras looks it up by (the registered name, ``acme>MyLayer``).
    ``transport`` says how it travels: ``distribution`` (``requirement`` pins the installed
    distribution, code not copied), ``source`` (``sources`` are the bundled files needed to
    import ``module``), ``pickle`` (cloudpickled by value; ``sources`` are local modules the
    pickle imports, ``review_source`` the definition's text, for review only, when it could
    be read), or ``builtin`` (Keras's own; recorded for completeness).
    ``source_digest`` is the ``sha256:`` of the definition's text (decorators to last line),
    compared with a same-named definition found where the bundle is loaded. ``imports`` and
    ``distributions`` name the installed distributions the code imports.
    """

    name: str
    kind: str
    module: str
    qualname: str
    transport: str
    source_digest: str | None = None
    sources: list[SourceFile] = field(default_factory=list)
    pickle: PickleInfo | None = None
    review_source: str | None = None
    requirement: str | None = None
    imports: list[str] = field(default_factory=list)
    distributions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True, slots=True)
class Requirements:
    """Pinned requirements and, where the index was reachable, a hash-locked version."""

    requirements: str
    lock: str | None = None
    lock_hashed: bool = False
    note: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class ProbeInfo:
    """A deterministic sample input and the model's output on it, with the tolerance to use."""

    inputs: str
    outputs: str
    rtol: float
    atol: float


@dataclass(frozen=True, kw_only=True, slots=True)
class Asset:
    """A file or directory the user added to the bundle (format 1.1).

    ``path`` is ``assets/NAME``, a listed member: a file, or a directory that holds every
    listed member under it. ``NAME`` is what a load calls it (``kbundle.open(...).assets``).
    """

    path: str

    @property
    def name(self) -> str:
        return self.path.partition("/")[2]


@dataclass(frozen=True, kw_only=True, slots=True)
class Provenance:
    """Where and how the bundle was made, as far as the packing process could tell (format
    1.1): the git commit of the current directory's repository and whether its tracked files
    had changes, the process's command line (``sys.argv``), and the host name (recorded only
    when asked for). ``None`` where unknown or not recorded. Informative only."""

    git_commit: str | None = None
    git_dirty: bool | None = None
    command: list[str] | None = None
    hostname: str | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Metadata:
    """User labels (string -> string) and the recorded provenance (format 1.1). Informative:
    never used to decide whether a bundle is valid or may be loaded."""

    labels: dict[str, str] = field(default_factory=dict)
    provenance: Provenance | None = None


@dataclass(frozen=True, kw_only=True, slots=True)
class Manifest:
    """The whole manifest of one bundle. ``assets`` and ``metadata`` are format 1.1; a 1.0
    manifest reads with no assets and no metadata."""

    format_version: str
    generator: str
    created: str
    model: ModelInfo
    members: list[Member]
    environment: Environment
    custom_objects: list[CustomObject] = field(default_factory=list)
    requirements: Requirements | None = None
    probe: ProbeInfo | None = None
    assets: list[Asset] = field(default_factory=list)
    metadata: Metadata | None = None

    def to_dict(self) -> dict[str, Any]:
        return _to_json(self)  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        manifest: Manifest = _from_json(cls, data, "")
        manifest.validate()
        return manifest

    def member(self, path: str) -> Member | None:
        """The member called ``path``, if listed."""
        for member in self.members:
            if member.path == path:
                return member
        return None

    @property
    def payload_size(self) -> int:
        """The sum of all file sizes the manifest declares."""
        return sum(m.size or 0 for m in self.members)

    def validate(self) -> None:
        """Check the rules a type check cannot: names, digests, uniqueness, references."""
        problems: list[str] = []
        if len(self.members) > MAX_MEMBERS:
            raise LimitExceededError(
                f"manifest lists {len(self.members)} members, more than the limit of {MAX_MEMBERS}",
                hint="this is not a bundle kbundle wrote; refuse it",
            )
        seen: dict[str, str] = {}
        file_paths: set[str] = set()
        for index, member in enumerate(self.members):
            where = f"members[{index}]"
            problem = name_problem(member.path)
            if problem:
                problems.append(f"{where}.path: {problem}: {member.path!r}")
            key = collision_key(member.path)
            if key in seen:
                problems.append(
                    f"{where}.path: duplicate of {seen[key]!r} (after case folding): "
                    f"{member.path!r}"
                )
            seen[key] = member.path
            if member.type not in MEMBER_TYPES:
                problems.append(f"{where}.type: must be one of {MEMBER_TYPES}: {member.type!r}")
            elif member.type == "file":
                file_paths.add(key)
                if member.size is None or member.size < 0:
                    problems.append(f"{where}.size: a file needs a size >= 0: {member.size!r}")
                if member.digest is None or not _DIGEST_RE.match(member.digest):
                    problems.append(
                        f"{where}.digest: must be 'sha256:' and 64 lowercase hex digits: "
                        f"{member.digest!r}"
                    )
            elif member.size is not None or member.digest is not None:
                problems.append(f"{where}: a directory has no size or digest")
        for key in seen:
            parent = key.rpartition("/")[0]
            while parent:
                if parent in file_paths:
                    problems.append(f"members: {parent!r} is a file and also a directory")
                parent = parent.rpartition("/")[0]
        if self.model.format not in MODEL_FORMATS:
            problems.append(f"model.format: must be one of {MODEL_FORMATS}: {self.model.format!r}")
        listed = {member.path: member.type for member in self.members}
        model_type = _MODEL_MEMBER_TYPES.get(self.model.format)
        problems.extend(
            _reference_problems(
                "model.path",
                self.model.path,
                "model",
                model_type,
                listed,
                what=f"a {self.model.format!r} model",
            )
        )
        for index, obj in enumerate(self.custom_objects):
            if obj.transport not in TRANSPORTS:
                problems.append(
                    f"custom_objects[{index}].transport: must be one of {TRANSPORTS}: "
                    f"{obj.transport!r}"
                )
            problems.extend(_custom_object_problems(obj, f"custom_objects[{index}]", listed))
        if self.requirements is not None:
            for key, path in (
                ("requirements", self.requirements.requirements),
                ("lock", self.requirements.lock),
            ):
                if path is not None:
                    problems.extend(
                        _reference_problems(f"requirements.{key}", path, "env", "file", listed)
                    )
        if self.probe is not None:
            for key, path in (("inputs", self.probe.inputs), ("outputs", self.probe.outputs)):
                problems.extend(_reference_problems(f"probe.{key}", path, "probe", "file", listed))
        problems.extend(self._asset_problems(listed))
        problems.extend(self._unreferenced_problems())
        if problems:
            raise BundleFormatError(
                f"the manifest breaks {len(problems)} format rule(s): {problems[0]}"
                + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
                hint="the bundle was not written by a conforming kbundle or was tampered with",
            )

    def _asset_problems(self, listed: dict[str, str]) -> list[str]:
        """Each asset names a listed member ``assets/NAME`` (a file or a directory), once."""
        problems = []
        seen: set[str] = set()
        for index, asset in enumerate(self.assets):
            where = f"assets[{index}].path"
            found = _reference_problems(where, asset.path, "assets", None, listed)
            if not found and asset.path.count("/") != _ASSET_DEPTH - 1:
                found = [f"{where}: an asset is one entry directly under assets/: {asset.path!r}"]
            if not found and collision_key(asset.path) in seen:
                found = [f"{where}: named twice: {asset.path!r}"]
            seen.add(collision_key(asset.path))
            problems.extend(found)
        return problems

    def _unreferenced_problems(self) -> list[str]:
        """Payload members outside ``model/`` that no manifest field references: a file must
        be named by the field of its area, a directory must hold such a file; under
        ``assets/`` a member is an asset or lies inside a directory asset."""
        referenced: dict[str, set[str]] = {
            "code": {source.path for obj in self.custom_objects for source in obj.sources},
            "objects": {obj.pickle.path for obj in self.custom_objects if obj.pickle},
            "env": set(),
            "probe": set(),
        }
        if self.requirements is not None:
            referenced["env"].add(self.requirements.requirements)
            if self.requirements.lock is not None:
                referenced["env"].add(self.requirements.lock)
        if self.probe is not None:
            referenced["probe"].update((self.probe.inputs, self.probe.outputs))
        ancestors = {
            path.rsplit("/", depth)[0]
            for paths in referenced.values()
            for path in paths
            for depth in range(1, path.count("/") + 1)
        }
        assets = {asset.path for asset in self.assets}
        listed = {member.path: member.type for member in self.members}
        asset_directories = {path for path in assets if listed.get(path) == "dir"}
        problems = []
        for index, member in enumerate(self.members):
            area = member.path.partition("/")[0]
            if area not in _REFERENCED_BY:
                continue  # model/ holds whatever the model's own format holds
            if area == "assets":
                root = "/".join(member.path.split("/")[:_ASSET_DEPTH])
                if member.path not in assets and root not in asset_directories:
                    problems.append(
                        f"members[{index}].path: {member.path!r} is neither an asset nor inside "
                        "a directory asset (assets[].path)"
                    )
            elif member.type == "dir":
                if member.path not in ancestors:
                    problems.append(
                        f"members[{index}].path: directory {member.path!r} holds no file "
                        "that a manifest field references"
                    )
            elif member.path not in referenced[area]:
                problems.append(
                    f"members[{index}].path: {member.path!r} is not referenced by "
                    f"{_REFERENCED_BY[area]}"
                )
        return problems


def _reference_problems(
    where: str,
    path: str,
    area: str,
    member_type: str | None,
    listed: dict[str, str],
    *,
    what: str = "it",
) -> list[str]:
    """Why a manifest field naming a member breaks the rules: the name must pass the member
    naming rules, lie under ``area``, and be exactly the path of a listed member of
    ``member_type`` (any type when None). At most one problem, the first that applies."""
    problem = name_problem(path)
    if problem:
        return [f"{where}: {problem}: {path!r}"]
    if not path.startswith(f"{area}/"):
        return [f"{where}: must be under {area}/: {path!r}"]
    found = listed.get(path)
    if found is None:
        return [f"{where}: not a listed member: {path!r}"]
    if member_type is not None and found != member_type:
        return [f"{where}: {what} must be a {member_type} member, not a {found}: {path!r}"]
    return []


def _custom_object_problems(obj: CustomObject, where: str, listed: dict[str, str]) -> list[str]:
    """Rules that keep bundled code where a reader looks for it: source files at the path
    their module name gives (``code/pkg/mod.py`` or ``code/pkg/__init__.py``), pickles under
    ``objects/``, each a listed file, and the field each transport needs."""
    problems = []
    for i, source in enumerate(obj.sources):
        parts = source.module.split(".")
        stem = "code/" + "/".join(parts)
        if not all(part.isidentifier() for part in parts):
            problems.append(
                f"{where}.sources[{i}].module: not a dotted module name: {source.module!r}"
            )
        elif source.path not in (f"{stem}.py", f"{stem}/__init__.py"):
            problems.append(
                f"{where}.sources[{i}].path: module {source.module} must live at {stem}.py or "
                f"{stem}/__init__.py: {source.path!r}"
            )
        else:
            location = f"{where}.sources[{i}].path"
            problems.extend(_reference_problems(location, source.path, "code", "file", listed))
    if obj.pickle is not None:
        problems.extend(
            _reference_problems(f"{where}.pickle.path", obj.pickle.path, "objects", "file", listed)
        )
    if obj.transport == "source" and not obj.sources:
        problems.append(f"{where}.sources: a source object needs its source files")
    if obj.transport == "pickle" and obj.pickle is None:
        problems.append(f"{where}.pickle: a pickled object needs its pickle")
    if obj.transport == "distribution" and not obj.requirement:
        problems.append(f"{where}.requirement: a distribution object needs its requirement")
    return problems


# --------------------------------------------------------------------------------------------
# Bytes <-> manifest


def serialize_manifest(manifest: Manifest) -> bytes:
    """The manifest's bytes as written: UTF-8 JSON, two-space indent, trailing newline."""
    return (json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def parse_manifest(data: bytes) -> Manifest:
    """Parse and validate manifest bytes, applying every limit before ``json.loads``.

    A manifest of a newer minor version that breaks a rule of this version (say a member in
    a payload area this reader does not know, referenced by a field it ignores) is refused as
    a newer format, not as a damaged bundle: a reader of that version may read it.
    """
    raw = load_json_object(data, what="manifest", limit=MAX_MANIFEST_BYTES)
    version = raw.get("format_version")
    newer = check_format_version(version)
    try:
        return Manifest.from_dict(raw)
    except BundleFormatError as exc:
        if not newer:
            raise
        raise UnsupportedFormatVersionError(
            f"bundle format {version} is newer than this kbundle reads ({FORMAT_VERSION}) and "
            f"uses what it cannot check: {exc.message}",
            hint=f"install a kbundle release that reads format {version}",
        ) from None


def load_json_object(data: bytes, *, what: str, limit: int) -> dict[str, Any]:
    """Strict JSON for bundle members: at most ``limit`` bytes of UTF-8, nesting capped before
    parsing, duplicate keys and non-finite numbers refused, and an object at the top.
    ``what`` names the member in messages."""
    if len(data) > limit:
        raise LimitExceededError(
            f"{what} is {len(data)} bytes, more than the limit of {limit}",
            hint="this is not a bundle kbundle wrote; refuse it",
        )
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BundleFormatError(
            f"{what} is not UTF-8 (byte {exc.start})", hint="the bundle is corrupt"
        ) from None
    _check_depth(text, what)
    try:
        raw = json.loads(
            text,
            object_pairs_hook=_no_duplicate_keys,
            parse_constant=_no_constants,
            parse_float=_finite_float,
        )
    except (json.JSONDecodeError, ValueError) as exc:
        raise BundleFormatError(
            f"{what} is not valid JSON: {exc}", hint="the bundle is corrupt"
        ) from None
    if not isinstance(raw, dict):
        raise BundleFormatError(f"{what} is not a JSON object", hint="the bundle is corrupt")
    return raw


def check_format_version(version: Any) -> bool:
    """Reject an unknown major version; warn on a newer minor one (and return True)."""
    if not isinstance(version, str) or not _FORMAT_VERSION_RE.fullmatch(version):
        raise BundleFormatError(
            f"format_version must be 'MAJOR.MINOR': {version!r}", hint="the bundle is corrupt"
        )
    if any(len(part) > _MAX_VERSION_DIGITS for part in version.split(".")):
        shown = version if len(version) <= 40 else f"{version[:37]}..."
        raise BundleFormatError(
            f"format_version has a number of more than {_MAX_VERSION_DIGITS} digits: {shown!r}",
            hint="the bundle is corrupt",
        )
    major, minor = (int(part) for part in version.split("."))
    our_major, our_minor = (int(part) for part in FORMAT_VERSION.split("."))
    if major != our_major:
        raise UnsupportedFormatVersionError(
            f"bundle format {version} is not readable by this kbundle (reads {our_major}.x)",
            hint="install a kbundle release that reads this format",
        )
    if minor > our_minor:
        warnings.warn(
            f"bundle format {version} is newer than {FORMAT_VERSION}; unknown fields are ignored",
            NewerFormatWarning,
            stacklevel=3,
        )
        return True
    return False


def _check_depth(text: str, what: str) -> None:
    depth = 0
    # The closing quote is optional so that an unterminated string is consumed once; a
    # required one made the scan quadratic on text like '"\\"\\"\\"...'.
    for match in re.finditer(r'"(?:[^"\\]+|\\.)*"?|[\[\]{}]', text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise LimitExceededError(
                    f"{what} JSON is nested deeper than {MAX_JSON_DEPTH} levels",
                    hint="this is not a bundle kbundle wrote; refuse it",
                )
        elif token in "]}":
            depth -= 1


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            # Parsers disagree on which duplicate wins; refusing removes the ambiguity.
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _no_constants(name: str) -> Any:
    raise ValueError(f"non-standard number {name}")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 overflows to inf without passing parse_constant
        raise ValueError(f"number out of range {text}")
    return value


# --------------------------------------------------------------------------------------------
# Generic dataclass <-> JSON conversion, with location paths in errors

_T = TypeVar("_T")


def _to_json(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_json(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list):
        return [_to_json(item) for item in value]
    if isinstance(value, dict):
        return {key: _to_json(item) for key, item in value.items()}
    return value


def _type_error(location: str, expected: str, value: Any) -> BundleFormatError:
    shown = repr(value)
    if len(shown) > 80:
        shown = shown[:77] + "..."
    return BundleFormatError(
        f"manifest field {location or '(root)'} must be {expected}: {shown}",
        hint="the bundle was not written by a conforming kbundle or was tampered with",
    )


def _from_json(tp: Any, value: Any, location: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        options = typing.get_args(tp)
        if value is None:
            if type(None) in options:
                return None
            raise _type_error(location, "present", value)
        (inner,) = [option for option in options if option is not type(None)]
        return _from_json(inner, value, location)
    if origin is list:
        if not isinstance(value, list):
            raise _type_error(location, "a list", value)
        (item_type,) = typing.get_args(tp)
        return [_from_json(item_type, item, f"{location}[{i}]") for i, item in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(location, "an object", value)
        _, item_type = typing.get_args(tp)
        return {
            key: _from_json(item_type, item, f"{location}.{key}") for key, item in value.items()
        }
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _dataclass_from_json(tp, value, location)
    if tp is Any:
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise _type_error(location, "true or false", value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise _type_error(location, "an integer", value)
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _type_error(location, "a number", value)
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise _type_error(location, "a string", value)
        return value
    raise TypeError(f"unsupported manifest field type {tp!r} at {location}")  # a bug, not input


def _dataclass_from_json(cls: type[_T], value: Any, location: str) -> _T:
    if not isinstance(value, dict):
        raise _type_error(location, "an object", value)
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        where = f"{location}.{f.name}" if location else f.name
        if f.name not in value:
            has_default = (
                f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            )
            if has_default:
                continue
            raise _type_error(where, "present", None)
        kwargs[f.name] = _from_json(hints[f.name], value[f.name], where)
    return cls(**kwargs)
