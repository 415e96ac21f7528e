"""Property tests (hypothesis): damage is always a kbundle error, names are safe whenever they
are accepted, and manifests survive their own round trip.

Examples are bounded and the example database is off, so a run costs a few seconds and
CI sees the same examples every time (``derandomize``); a failure prints the exact input.
"""

from __future__ import annotations

import ntpath
import posixpath
import random
import tarfile
import unicodedata
from pathlib import Path, PurePosixPath, PureWindowsPath

import pytest
from bundle_factory import Entry, forge, manifest_for
from hostile import base_manifest, stored_bundle, verify_error
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from kbundle.container.limits import MAX_MEMBER_NAME_BYTES
from kbundle.container.manifest import (
    FORMAT_VERSION,
    MODEL_FORMATS,
    CustomObject,
    Environment,
    KerasInfo,
    Manifest,
    Member,
    ModelInfo,
    PickleInfo,
    PlatformInfo,
    ProbeInfo,
    PythonInfo,
    Requirements,
    SourceFile,
    TensorFlowInfo,
    TensorSpec,
    parse_manifest,
    serialize_manifest,
)
from kbundle.container.names import PAYLOAD_AREAS, collision_key, name_problem

BOUNDED = settings(
    max_examples=300,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)


# --------------------------------------------------------------------------------------------
# Damage: any single-byte change, any truncation


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """Two small bundles: stored (member bytes verbatim) and compressed with a directory."""
    directory = tmp_path_factory.mktemp("property-bundles")
    rng = random.Random(6)
    stored = stored_bundle(
        directory / "stored.kbundle",
        {"model/model.keras": rng.randbytes(600), "env/requirements.txt": b"keras==3.15.0\n"},
    )
    entries = [
        Entry("model/assets", type=tarfile.DIRTYPE),
        Entry("model/model.keras", bytes(300) + rng.randbytes(300)),
        Entry("model/assets/vocab.txt", b"a\nb\nc\n"),
    ]
    compressed = forge(
        directory / "compressed.kbundle", manifest_for(entries, base_manifest()), entries
    )
    return {"stored": stored.read_bytes(), "compressed": compressed.read_bytes()}


@pytest.fixture(scope="module")
def probe_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("property-probe") / "probe.kbundle"


@BOUNDED
@given(
    data=st.data(),
    which=st.sampled_from(["stored", "compressed"]),
    edit=st.sampled_from(["replace", "insert", "delete"]),
)
def test_any_single_byte_change_is_a_kbundle_error(
    bundles: dict[str, bytes], probe_path: Path, data: st.DataObject, which: str, edit: str
) -> None:
    original = bundles[which]
    offset = data.draw(st.integers(0, len(original) - 1), label="offset")
    if edit == "replace":
        mask = data.draw(st.integers(1, 255), label="xor mask")
        changed = original[:offset] + bytes([original[offset] ^ mask]) + original[offset + 1 :]
    elif edit == "insert":
        changed = (
            original[:offset]
            + bytes([data.draw(st.integers(0, 255), label="byte")])
            + original[offset:]
        )
    else:
        changed = original[:offset] + original[offset + 1 :]
    probe_path.write_bytes(changed)
    error = verify_error(probe_path)
    assert error is not None, f"{edit} at {offset} verified"
    event(type(error).__name__)


@BOUNDED
@given(which=st.sampled_from(["stored", "compressed"]), fraction=st.floats(0, 1, exclude_max=True))
def test_any_truncation_is_a_kbundle_error(
    bundles: dict[str, bytes], probe_path: Path, which: str, fraction: float
) -> None:
    original = bundles[which]
    cut = int(len(original) * fraction)
    probe_path.write_bytes(original[:cut])
    assert verify_error(probe_path) is not None, f"cut at {cut} verified"


def test_the_unchanged_bundles_verify(bundles: dict[str, bytes], probe_path: Path) -> None:
    """The control for the two properties above: without damage there is no error."""
    for data in bundles.values():
        probe_path.write_bytes(data)
        assert verify_error(probe_path) is None


# --------------------------------------------------------------------------------------------
# Member names


_FRAGMENTS = [
    "model",
    "code",
    "objects",
    "env",
    "probe",
    "..",
    ".",
    "",
    " ",
    "a",
    "b.txt",
    "con",
    "aux.h5",
    "x.",
    "C:",
    "\\",
    "\0",
    "\n",
    "/",
    "e\u0301",
    "\u00e9",
    "\u212b",
    "MODEL",
    "~",
    "$",
]

# Anything at all, lone surrogates and control characters included; names assembled from the
# fragments where the rules have edges; and names under a payload area with arbitrary
# components, so that a good share of the names is accepted and the properties bite.
_any_text = st.text(st.characters(exclude_categories=()), max_size=40)
any_name = st.one_of(
    _any_text,
    st.lists(st.sampled_from(_FRAGMENTS) | st.text(max_size=4), min_size=1, max_size=6).map(
        "/".join
    ),
    st.lists(st.sampled_from(_FRAGMENTS), min_size=1, max_size=6).map("".join),
    st.tuples(
        st.sampled_from(PAYLOAD_AREAS),
        st.lists(
            st.text(min_size=1, max_size=8) | st.sampled_from(_FRAGMENTS), min_size=1, max_size=4
        ),
    ).map(lambda t: "/".join([t[0], *t[1]])),
)

_SAFE_COMPONENT = st.from_regex(
    r"[A-Za-z0-9_\-\u00e9\u00fc\u4e2d]{1,12}(\.[a-z0-9]{1,4})?", fullmatch=True
).filter(
    lambda part: (
        part.split(".")[0].lower() not in {"con", "prn", "aux", "nul"}
        and not part.lower().startswith(("com", "lpt"))
    )
)
safe_name = st.tuples(
    st.sampled_from(PAYLOAD_AREAS), st.lists(_SAFE_COMPONENT, min_size=1, max_size=5)
).map(lambda t: "/".join([t[0], *t[1]]))


@settings(BOUNDED, max_examples=2000)
@given(any_name)
def test_accepted_names_are_relative_normalised_and_stay_under_the_root(name: str) -> None:
    problem = name_problem(name)
    event("refused" if problem else "accepted")
    if problem is not None:
        assert isinstance(problem, str) and problem
        return
    assert unicodedata.normalize("NFC", name) == name
    assert len(name.encode("utf-8")) <= MAX_MEMBER_NAME_BYTES
    parts = name.split("/")
    assert parts[0] in PAYLOAD_AREAS and len(parts) >= 2
    assert not {"", ".", ".."} & set(parts)
    assert not any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)
    posix_root = "/dest"
    joined = posixpath.join(posix_root, name)
    assert posixpath.normpath(joined) == joined and joined.startswith(posix_root + "/")
    windows_root = "C:\\dest"
    joined_windows = ntpath.join(windows_root, name)
    assert ntpath.normpath(joined_windows).startswith(windows_root + "\\")
    assert PurePosixPath(name).parts == tuple(parts)
    windows = PureWindowsPath(name)
    assert not windows.drive and not windows.root and ".." not in windows.parts


@settings(BOUNDED, max_examples=500)
@given(safe_name)
def test_ordinary_names_are_accepted(name: str) -> None:
    """Keeps the property above from passing vacuously: real names are accepted."""
    assert name_problem(name) is None


@settings(BOUNDED, max_examples=500)
@given(any_name, any_name)
def test_names_that_collide_on_disk_share_a_collision_key(first: str, second: str) -> None:
    if (
        unicodedata.normalize("NFC", first).casefold()
        == unicodedata.normalize("NFC", second).casefold()
    ):
        assert collision_key(first) == collision_key(second)
    assert collision_key(collision_key(first)) == collision_key(first)


# --------------------------------------------------------------------------------------------
# Manifest round trip

_text = st.text(max_size=12)
_finite = st.floats(allow_nan=False, allow_infinity=False)
_json_value = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63) | _finite | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=8,
)
_digest = st.binary(min_size=32, max_size=32).map(lambda raw: "sha256:" + raw.hex())
_specs = st.lists(
    st.builds(
        TensorSpec,
        name=st.none() | _text,
        shape=st.none() | st.lists(st.none() | st.integers(0, 2**31), max_size=4),
        dtype=st.none() | _text,
    ),
    max_size=3,
)


def _no_file_is_a_directory(paths: list[str]) -> bool:
    keys = [collision_key(p) for p in paths]
    return not any(other.startswith(key + "/") for key in keys for other in keys)


_identifier = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)


@st.composite
def _code_and_pickles(draw: st.DrawFn, taken: list[str]) -> tuple[list[str], list[str]]:
    """Module names for code/<m>.py and names for objects/<n>.pkl that are valid members and
    collide with none of ``taken``."""
    keys = {collision_key(p) for p in taken}

    def usable(path: str) -> bool:
        key = collision_key(path)
        return (
            name_problem(path) is None
            and key not in keys
            and not any(k.startswith(key + "/") or key.startswith(k + "/") for k in keys)
        )

    modules = [
        m for m in draw(st.lists(_identifier, max_size=2, unique=True)) if usable(f"code/{m}.py")
    ]
    pickles = [
        n
        for n in draw(st.lists(_identifier, max_size=2, unique=True))
        if usable(f"objects/{n}.pkl")
    ]
    return modules, pickles


def _custom_objects(modules: list[str], pickles: list[str]) -> st.SearchStrategy[CustomObject]:
    """Custom-object records that keep the manifest's rules: each transport with the field it
    needs, source files at code/<module>.py, pickles under objects/."""
    common = {
        "name": _text,
        "kind": _text,
        "module": _text,
        "qualname": _text,
        "source_digest": st.none() | _digest,
        "review_source": st.none() | _text,
        "imports": st.lists(_text, max_size=3),
        "distributions": st.dictionaries(_text, _text, max_size=2),
    }
    options = [
        st.builds(CustomObject, transport=st.just("builtin"), **common),
        st.builds(
            CustomObject,
            transport=st.just("distribution"),
            requirement=_text.filter(bool),
            **common,
        ),
    ]
    if modules:
        sources = st.lists(st.sampled_from(modules), min_size=1, max_size=2, unique=True).map(
            lambda chosen: [SourceFile(module=m, path=f"code/{m}.py") for m in chosen]
        )
        options.append(
            st.builds(CustomObject, transport=st.just("source"), sources=sources, **common)
        )
    if pickles:
        pickled = st.builds(
            PickleInfo,
            path=st.sampled_from([f"objects/{n}.pkl" for n in pickles]),
            python=_text,
            protocol=st.integers(0, 5),
            cloudpickle=_text,
        )
        options.append(
            st.builds(CustomObject, transport=st.just("pickle"), pickle=pickled, **common)
        )
    return st.one_of(options)


def _in_area(area: str) -> st.SearchStrategy[str]:
    """Member names under one payload area."""
    return st.lists(_SAFE_COMPONENT, min_size=1, max_size=5).map(
        lambda parts: "/".join([area, *parts])
    )


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    """Manifests that keep every cross-field rule (spec 8.9): the model's files under
    model/, every file under code/, objects/, env/ and probe/ referenced by its field, and
    model.path a listed member of the type its format needs."""

    def file_member(path: str) -> Member:
        return Member(path=path, size=draw(st.integers(0, 2**53)), digest=draw(_digest))

    paths = draw(
        st.lists(_in_area("model"), min_size=1, max_size=6, unique_by=collision_key).filter(
            _no_file_is_a_directory
        )
    )
    model_files = [file_member(p) for p in paths]
    directories = [Member(path=p.rpartition("/")[0], type="dir") for p in paths if p.count("/") > 1]
    directories = list(
        {
            collision_key(m.path): m
            for m in directories
            if collision_key(m.path) not in {collision_key(p) for p in paths}
        }.values()
    )
    code_modules, pickle_names = draw(_code_and_pickles(paths))
    environment = draw(
        st.builds(
            Environment,
            python=st.builds(
                PythonInfo, version=_text, implementation=_text, pickle_protocol=st.integers(0, 5)
            ),
            platform=st.builds(
                PlatformInfo, system=_text, release=_text, machine=_text, libc=st.none() | _text
            ),
            tensorflow=st.none()
            | st.builds(
                TensorFlowInfo,
                distribution=_text,
                version=_text,
                captured=st.sampled_from(["runtime", "static"]),
                git_version=st.none() | _text,
                build_info=st.dictionaries(_text, _json_value, max_size=3),
                compile_flags=st.none() | st.lists(_text, max_size=3),
            ),
            keras=st.none()
            | st.builds(
                KerasInfo,
                distribution=_text,
                version=_text,
                major=st.integers(2, 3),
                backend=st.none() | _text,
                floatx=st.none() | _text,
                image_data_format=st.none() | _text,
            ),
            libraries=st.dictionaries(_text, _text, max_size=3),
            gpus=st.lists(_text, max_size=2),
            distributions=st.dictionaries(_text, _text, max_size=5),
        )
    )
    custom_objects = draw(st.lists(_custom_objects(code_modules, pickle_names), max_size=3))
    referenced = {source.path for obj in custom_objects for source in obj.sources}
    referenced |= {obj.pickle.path for obj in custom_objects if obj.pickle is not None}
    env = draw(st.lists(_in_area("env"), min_size=1, max_size=2, unique_by=collision_key))
    requirements = draw(
        st.none()
        | st.builds(
            Requirements,
            requirements=st.just(env[0]),
            lock=st.none() if len(env) == 1 else st.just(env[1]),
            lock_hashed=st.booleans(),
            note=st.none() | _text,
        )
    )
    if requirements is not None:
        referenced |= set(env if requirements.lock else env[:1])
    probe_files = draw(st.lists(_in_area("probe"), min_size=1, max_size=2, unique_by=collision_key))
    probe = draw(
        st.none()
        | st.builds(
            ProbeInfo,
            inputs=st.just(probe_files[0]),
            outputs=st.just(probe_files[-1]),
            rtol=_finite,
            atol=_finite,
        )
    )
    if probe is not None:
        referenced |= set(probe_files)
    members = draw(
        st.permutations(model_files + directories + [file_member(p) for p in sorted(referenced)])
    )
    fmt = draw(st.sampled_from(MODEL_FORMATS if directories else ("keras", "h5")))
    holders = directories if fmt in ("keras-dir", "savedmodel") else model_files
    return Manifest(
        format_version=FORMAT_VERSION,
        generator=draw(_text),
        created=draw(_text),
        model=draw(
            st.builds(
                ModelInfo,
                format=st.just(fmt),
                path=st.sampled_from([m.path for m in holders]),
                class_name=st.none() | _text,
                name=st.none() | _text,
                inputs=st.none() | _specs,
                outputs=st.none() | _specs,
                parameter_count=st.none() | st.integers(0, 2**40),
                saved_by=st.dictionaries(_text, _text, max_size=2),
            )
        ),
        members=members,
        environment=environment,
        custom_objects=custom_objects,
        requirements=requirements,
        probe=probe,
    )


@settings(BOUNDED, max_examples=80)
@given(manifests())
def test_manifest_round_trips_through_dict_and_bytes(manifest: Manifest) -> None:
    as_dict = manifest.to_dict()
    assert Manifest.from_dict(as_dict) == manifest
    assert parse_manifest(serialize_manifest(manifest)) == manifest
    assert Manifest.from_dict(as_dict).to_dict() == as_dict
