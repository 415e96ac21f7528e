"""THREATS.md rows 2, 12, 13 and 16: tampering that keeps every checksum consistent, and code
that must never run without trust.

tests/test_signing.py covers rows 2 and 16 through the CLI with bundles packed from real
models; here the forgeries are built from raw parts with the Python API, and row 16 also
checks that an unsigned forgery's environment is reported as it claims, not trusted.

Row 12 proves that untrusted code never runs with marker files: a bundled module whose import
writes one, and a cloudpickled object whose ``__setstate__`` writes another. Without trust
neither appears, whatever reads the bundle; with ``trust_code=True`` both do.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from bundle_factory import Entry, digest, forge, manifest_for
from conftest import assert_clean_failure, child_env, run_cli
from hostile import MODEL_PATH, base_manifest, empty_trusted_keys, model_bundle

import kbundle
from kbundle.container.manifest import parse_manifest
from kbundle.env.capture import capture_environment
from kbundle.env.rules import compare_environments
from kbundle.errors import IntegrityError, KbundleError, SignatureError, UntrustedCodeError
from kbundle.pipelines.sign import sign_bundle
from kbundle.signing import keys


@pytest.fixture
def trusted_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return empty_trusted_keys(tmp_path, monkeypatch)


@pytest.fixture
def release_key(tmp_path: Path) -> keys.GeneratedKey:
    pytest.importorskip("cryptography")
    return keys.generate_key(tmp_path / "release")


def _signed(bundle: Path, key: keys.GeneratedKey) -> bytes:
    sign_bundle(bundle, keys.load_signing_key(key.private_path))
    signature = kbundle.inspect(bundle).signature
    assert signature is not None
    return signature


def _edited(bundle: Path, change: Any) -> bytes:
    data = json.loads(kbundle.inspect(bundle).manifest_bytes)
    change(data)
    text = json.dumps(data, indent=2).encode()
    parse_manifest(text)  # well-formed: only a signature (or a pinned digest) can tell
    return text


# --------------------------------------------------------------------------------------------
# Row 2: a manifest rewritten with new hashes


def test_row02_rehashed_manifest_is_unsigned_or_fails_its_signature(
    tmp_path: Path, trusted_dir: Path, release_key: keys.GeneratedKey
) -> None:
    released = model_bundle(
        tmp_path / "released.kbundle", {MODEL_PATH: b"the model that was released"}
    )
    released_digest = kbundle.inspect(released).digest
    signature = _signed(released, release_key)

    # The forger swaps the model and re-hashes the manifest: every checksum is consistent.
    evil = Entry(MODEL_PATH, b"the model the attacker wants served")

    def rehash(data: dict[str, Any]) -> None:
        data["members"] = manifest_for([evil], {})["members"]

    manifest = _edited(released, rehash)
    unsigned = forge(tmp_path / "unsigned.kbundle", manifest, [evil])
    keeps_signature = forge(tmp_path / "kept.kbundle", manifest, [evil], signature=signature)

    report = kbundle.verify(unsigned)  # intact is not authentic
    assert (
        report.signature is not None
        and report.signature.describe() == "integrity-checked, not signed"
    )
    assert report.head.digest != released_digest
    with pytest.raises(IntegrityError, match="bundle digest differs from --expect"):
        kbundle.verify(unsigned, expect=released_digest)
    with pytest.raises(SignatureError):
        kbundle.verify(unsigned, require_signature=True)
    with pytest.raises(SignatureError):
        kbundle.verify(unsigned, trusted_keys=[release_key.public_path])

    for trusted in (None, [release_key.public_path]):  # a present signature must verify
        with pytest.raises(SignatureError) as caught:
            kbundle.verify(keeps_signature, trusted_keys=trusted)
        assert [(f.location, f.problem) for f in caught.value.findings] == [
            ("kbundle.sig", f"signature by {release_key.key_id} does not verify")
        ]


# --------------------------------------------------------------------------------------------
# Row 16: a forged environment block


def test_row16_forged_environment_is_signed_with_the_rest(
    tmp_path: Path, trusted_dir: Path, release_key: keys.GeneratedKey
) -> None:
    model = Entry(MODEL_PATH, b"model")
    bundle = model_bundle(tmp_path / "b.kbundle", {model.name: model.data})
    signature = _signed(bundle, release_key)

    def forge_environment(data: dict[str, Any]) -> None:
        data["environment"]["python"]["version"] = "3.7.0"
        data["environment"]["platform"]["machine"] = "riscv64"

    manifest = _edited(bundle, forge_environment)
    signed_forgery = forge(
        tmp_path / "signed-forgery.kbundle", manifest, [model], signature=signature
    )
    unsigned_forgery = forge(tmp_path / "unsigned-forgery.kbundle", manifest, [model])

    for call in (kbundle.verify, kbundle.load):
        with pytest.raises(SignatureError) as caught:
            call(signed_forgery, trusted_keys=[release_key.public_path])  # type: ignore[operator]
        assert [f.location for f in caught.value.findings] == ["kbundle.sig"]

    # Unsigned, the forgery is intact but never trusted, and what it claims is reported.
    report = kbundle.verify(unsigned_forgery)
    assert report.signature is not None and not report.signature.trusted
    with pytest.raises(SignatureError):
        kbundle.verify(unsigned_forgery, require_signature=True)
    differences = compare_environments(report.head.manifest.environment, capture_environment())
    python = [f for f in differences if f.location == "python.version"]
    assert [(f.expected, f.actual) for f in python] == [("3.7.0", platform.python_version())]


# --------------------------------------------------------------------------------------------
# Row 12: bundled code (source or cloudpickle) never runs without trust

_MARKER_PICKLES = """
import pathlib, sys
import cloudpickle

class Marker:
    def __init__(self, path):
        self.path = path
    def __getstate__(self):
        return {"path": self.path}
    def __setstate__(self, state):
        pathlib.Path(state["path"]).write_text("the pickle ran")
        self.__dict__.update(state)

for out, marker in zip(sys.argv[1::2], sys.argv[2::2]):
    pathlib.Path(out).write_bytes(cloudpickle.dumps(Marker(marker)))
"""
MODULE = "kbundle_security_sidefx"


def _python(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, env=child_env(), timeout=120
    )


@pytest.fixture
def code_bundle(saved_keras_file: Path, tmp_path: Path) -> tuple[Path, list[Path]]:
    """A real model bundled with a module whose import writes a marker and a cloudpickle whose
    ``__setstate__`` writes another. Both are proven to run when loaded directly."""
    import cloudpickle

    markers = [tmp_path / "module-ran", tmp_path / "pickle-ran"]
    source = (
        f"import pathlib\npathlib.Path({str(markers[0])!r}).write_text('the module ran')\n"
        "\n\ndef scaled(x):\n    return x * 2\n"
    )
    pickles = tmp_path / "pickles"
    pickles.mkdir()
    made = _python(
        "-c",
        _MARKER_PICKLES,
        str(pickles / "control.pkl"),
        str(tmp_path / "control-ran"),
        str(pickles / "marker.pkl"),
        str(markers[1]),
    )
    assert made.returncode == 0, made.stderr

    # The controls: this hostile input really runs, in a process that loads it directly.
    (pickles / "control.py").write_text(
        source.replace(str(markers[0]), str(tmp_path / "control-module-ran"))
    )
    assert _python(str(pickles / "control.py")).returncode == 0
    assert (
        _python(
            "-c",
            f"import pickle; pickle.loads(open({str(pickles / 'control.pkl')!r}, 'rb').read())",
        ).returncode
        == 0
    )
    assert (tmp_path / "control-module-ran").exists() and (tmp_path / "control-ran").exists()
    assert not any(m.exists() for m in markers)

    files = {
        MODEL_PATH: saved_keras_file.read_bytes(),
        f"code/{MODULE}.py": source.encode(),
        "objects/marker.pkl": (pickles / "marker.pkl").read_bytes(),
    }
    records = [
        {
            "name": "scaled",
            "kind": "function",
            "module": MODULE,
            "qualname": "scaled",
            "transport": "source",
            "source_digest": digest(source.encode()),
            "sources": [{"module": MODULE, "path": f"code/{MODULE}.py"}],
        },
        {
            "name": "Marker",
            "kind": "object",
            "module": "__main__",
            "qualname": "Marker",
            "transport": "pickle",
            "pickle": {
                "path": "objects/marker.pkl",
                "python": platform.python_version(),
                "protocol": 5,
                "cloudpickle": cloudpickle.__version__,
            },
        },
    ]
    return model_bundle(tmp_path / "code.kbundle", files, custom_objects=records), markers


@pytest.mark.keras
def test_row12_bundled_code_never_runs_without_trust(
    code_bundle: tuple[Path, list[Path]], tmp_path: Path, trusted_dir: Path
) -> None:
    bundle, markers = code_bundle
    message = (
        "loading would run bundled code nobody trusted: scaled (source), Marker (pickle); "
        "review it with 'kbundle show-code', then pass --trust-code (trust_code=True), "
        "or trust the signer's public key (--key, or the trusted keys directory)"
    )
    # Reading never runs anything.
    kbundle.inspect(bundle)
    kbundle.verify(bundle)
    kbundle.unpack(bundle, tmp_path / "files")
    with pytest.raises(UntrustedCodeError) as caught:
        kbundle.load(bundle)
    assert str(caught.value) == message
    with pytest.raises(UntrustedCodeError):
        kbundle.unpack(bundle, tmp_path / "loaded", load_model=True)
    assert not (tmp_path / "loaded").exists()
    assert MODULE not in sys.modules

    for command in (
        ["inspect", bundle],
        ["verify", bundle],
        ["unpack", bundle, "-d", tmp_path / "cli-files", "--no-load"],
    ):
        assert run_cli(*command).returncode == 0
    refused = run_cli("unpack", bundle, "-d", tmp_path / "cli-out")
    assert_clean_failure(refused, 4)
    assert refused.stderr == f"kbundle: error: {message}\n"
    assert not (tmp_path / "cli-out").exists()
    assert [m for m in markers if m.exists()] == []


@pytest.mark.keras
def test_row12_bundled_code_runs_with_trust(code_bundle: tuple[Path, list[Path]]) -> None:
    """The other half of the proof: the same bundle, trusted, runs both (so the test above
    would have seen them)."""
    bundle, markers = code_bundle
    kbundle.load(bundle, trust_code=True)
    assert [m.name for m in markers if m.exists()] == ["module-ran", "pickle-ran"]


# --------------------------------------------------------------------------------------------
# Row 13: a pickle from another Python minor


@pytest.mark.keras
def test_row13_pickle_from_another_python_minor_is_refused_even_with_trust(
    code_bundle: tuple[Path, list[Path]], tmp_path: Path
) -> None:
    bundle, markers = code_bundle
    data = json.loads(kbundle.inspect(bundle).manifest_bytes)
    data["custom_objects"][1]["pickle"]["python"] = "3.7.17"
    kbundle.unpack(bundle, tmp_path / "files")
    entries = [
        Entry(m["path"], (tmp_path / "files" / m["path"]).read_bytes()) for m in data["members"]
    ]
    other_python = forge(
        tmp_path / "py37.kbundle",
        manifest_for(entries, {**base_manifest(), "custom_objects": data["custom_objects"]}),
        entries,
    )

    with pytest.raises(KbundleError) as caught:
        kbundle.load(other_python, trust_code=True)
    message = str(caught.value)
    assert "Python 3.7" in message and "source" in message  # which fallback exists, if any
    assert [m for m in markers if m.exists()] == []
