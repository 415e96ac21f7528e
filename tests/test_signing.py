"""Signed bundles: keygen, sign, pack --sign, verify with trusted keys, code trust by signature.

Covers THREATS.md rows 2 (a manifest rewritten with new hashes) and 16 (a forged environment
block in a signed bundle). Forged bundles are built here with kbundle.container.writer,
so every checksum and digest is consistent and only the signature can catch the forgery.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import zstandard
from conftest import REPO, assert_clean_failure, child_env, run_cli

import kbundle
from kbundle.container.hashing import file_digest
from kbundle.container.manifest import (
    CustomObject,
    Member,
    SourceFile,
    parse_manifest,
    serialize_manifest,
)
from kbundle.container.signature_member import (
    parse_signatures,
    serialize_signatures,
    signature_member_size,
)
from kbundle.container.writer import PayloadFile, header_region, header_region_size, write_bundle
from kbundle.errors import SignatureError, UntrustedCodeError, UsageError
from kbundle.pipelines.pack import Extras
from kbundle.pipelines.sign import sign_bundle
from kbundle.signing import keys

pytestmark = pytest.mark.keras

EPOCH = "1700000000"  # SOURCE_DATE_EPOCH: identical manifests from two packs


# --------------------------------------------------------------------------------------------
# Fixtures and helpers


def _tiny_model_file(factory: pytest.TempPathFactory, seed: int) -> Path:
    """A 10-parameter model saved as .keras; the seed decides its weights."""
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)], name="signed_tiny")
    path = factory.mktemp(f"model{seed}") / "model.keras"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _tiny_model_file(tmp_path_factory, seed=3)


@pytest.fixture(scope="module")
def other_model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same architecture with other weights: what a forger would swap in."""
    return _tiny_model_file(tmp_path_factory, seed=4)


@pytest.fixture
def bundle(tmp_path: Path, model_file: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    return kbundle.pack(model_file, tmp_path / "model.kbundle").path


@pytest.fixture
def key_dir(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    path.mkdir()
    return path


@pytest.fixture
def key(key_dir: Path) -> keys.GeneratedKey:
    return keys.generate_key(key_dir / "release")


@pytest.fixture
def other_key(key_dir: Path) -> keys.GeneratedKey:
    return keys.generate_key(key_dir / "other")


@pytest.fixture
def trusted_dir(tmp_path: Path) -> Path:
    """An empty trusted-keys directory (so the developer's own keys never leak in)."""
    path = tmp_path / "trusted"
    path.mkdir(mode=0o755)
    return path


def env(trusted_dir: Path, **extra: str) -> dict[str, str]:
    """A child environment with ``trusted_dir`` as the trust store and no inherited passphrase."""
    values = child_env(KBUNDLE_TRUSTED_KEYS=str(trusted_dir))
    values.pop("KBUNDLE_KEY_PASSPHRASE", None)
    values.update(extra)
    return values


def signed(bundle: Path, key: keys.GeneratedKey) -> Path:
    sign_bundle(bundle, keys.load_signing_key(key.private_path))
    return bundle


def rebuild(source: Path, target: Path, manifest_bytes: bytes, signature: bytes | None) -> Path:
    """``source`` with a new header region (manifest and signature), payload frames as they are."""
    with source.open("rb") as handle:
        size = header_region_size(handle)
        assert size is not None
        handle.seek(size)
        payload = handle.read()
    target.write_bytes(header_region(manifest_bytes, signature) + payload)
    return target


def edit_manifest(bundle: Path, change: Callable[[dict[str, Any]], None]) -> bytes:
    data = json.loads(kbundle.inspect(bundle).manifest_bytes)
    change(data)
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def ok_prefix(bundle: Path) -> str:
    """The start of verify's summary line for ``bundle`` (a tiny model: kilobytes)."""
    manifest = kbundle.inspect(bundle).manifest
    assert 1000 <= manifest.payload_size < 1_000_000
    count = len(manifest.members)
    return f"OK: {count} file{'' if count == 1 else 's'}, {manifest.payload_size / 1000:.1f} KB verified"


# --------------------------------------------------------------------------------------------
# keygen


def test_keygen_writes_private_key_0600_and_public_key(tmp_path: Path) -> None:
    result = run_cli("keygen", "-o", tmp_path / "release", "--no-passphrase")
    assert result.returncode == 0, result.stderr
    private, public = tmp_path / "release.key", tmp_path / "release.pub"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(public.stat().st_mode) == 0o644 & ~umask
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----\n")
    key_id = keys.load_public_key(public).key_id
    assert key_id == keys.load_signing_key(private).key_id
    assert result.stdout == f"{key_id}  {public}\n"
    assert (
        f"wrote private key {private} (not encrypted; keep it secret) and public key {public}"
        in result.stderr
    )
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["release.key", "release.pub"]


def test_keygen_quiet_prints_only_the_fingerprint_line(tmp_path: Path) -> None:
    result = run_cli("keygen", "-o", tmp_path / "ci", "--no-passphrase", "-q")
    assert (result.returncode, result.stderr) == (0, "")
    key_id = keys.load_public_key(tmp_path / "ci.pub").key_id
    assert result.stdout == f"{key_id}  {tmp_path / 'ci.pub'}\n"


def test_keygen_never_overwrites_without_force(tmp_path: Path) -> None:
    assert run_cli("keygen", "-o", tmp_path / "release", "--no-passphrase").returncode == 0
    before = (tmp_path / "release.key").read_bytes(), (tmp_path / "release.pub").read_bytes()
    again = run_cli("keygen", "-o", tmp_path / "release.key", "--no-passphrase")
    assert_clean_failure(again, 2)
    assert (
        again.stderr == f"kbundle: error: private key {tmp_path / 'release.key'} already exists; "
        "pass --force (force=True) to replace it\n"
    )
    assert (
        (tmp_path / "release.key").read_bytes(),
        (tmp_path / "release.pub").read_bytes(),
    ) == before
    forced = run_cli("keygen", "-o", tmp_path / "release", "--no-passphrase", "--force")
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "release.key").read_bytes() != before[0]
    assert stat.S_IMODE((tmp_path / "release.key").stat().st_mode) == 0o600


def test_passphrase_protected_key_round_trip(
    tmp_path: Path, bundle: Path, trusted_dir: Path
) -> None:
    secret = tmp_path / "passphrase.txt"
    secret.write_text("correct horse battery staple\n")
    made = run_cli(
        "keygen", "-o", tmp_path / "release", "--passphrase-file", secret, env=env(trusted_dir)
    )
    assert made.returncode == 0, made.stderr
    private = tmp_path / "release.key"
    assert private.read_bytes().startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----\n")
    assert "(passphrase-protected; keep it secret)" in made.stderr

    missing = run_cli("sign", bundle, "--key", private, env=env(trusted_dir))
    assert_clean_failure(missing, 2)
    assert missing.stderr == (
        f"kbundle: error: private key {private} is protected by a passphrase and none was given; "
        "pass --passphrase-file FILE or set KBUNDLE_KEY_PASSPHRASE\n"
    )
    wrong = run_cli(
        "sign", bundle, "--key", private, env=env(trusted_dir, KBUNDLE_KEY_PASSPHRASE="wrong")
    )
    assert_clean_failure(wrong, 2)
    assert wrong.stderr == (
        f"kbundle: error: private key {private} could not be decrypted: wrong passphrase; "
        "check --passphrase-file or KBUNDLE_KEY_PASSPHRASE\n"
    )
    assert kbundle.inspect(bundle).signature is None  # nothing was written by the failed attempts

    good = run_cli(
        "sign",
        bundle,
        "--key",
        private,
        env=env(trusted_dir, KBUNDLE_KEY_PASSPHRASE="correct horse battery staple"),
    )
    assert good.returncode == 0, good.stderr
    checked = run_cli("verify", bundle, "--key", tmp_path / "release.pub", env=env(trusted_dir))
    assert checked.returncode == 0, checked.stderr
    key_id = keys.load_signing_key(private, passphrase=b"correct horse battery staple").key_id
    assert f"; signed by {key_id} (trusted)\n" in checked.stderr


# --------------------------------------------------------------------------------------------
# sign and verify


def test_unsigned_bundle_is_reported_integrity_checked_not_signed(
    bundle: Path, trusted_dir: Path
) -> None:
    result = run_cli("verify", bundle, env=env(trusted_dir))
    assert result.returncode == 0, result.stderr
    assert result.stderr == f"{ok_prefix(bundle)} (integrity-checked, not signed)\n"
    assert result.stdout == f"{kbundle.inspect(bundle).digest}  {bundle}\n"


def test_sign_keeps_the_digest_and_verify_trusts_the_key_given(
    bundle: Path, key: keys.GeneratedKey, trusted_dir: Path
) -> None:
    digest = kbundle.inspect(bundle).digest
    result = run_cli("sign", bundle, "--key", key.private_path, env=env(trusted_dir))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{digest}  {bundle}\n"
    assert result.stderr == f"signed {bundle} with {key.key_id}\n"
    checked = run_cli(
        "verify", bundle, "--key", key.public_path, "--expect", digest, env=env(trusted_dir)
    )
    assert checked.returncode == 0, checked.stderr
    assert checked.stderr == f"{ok_prefix(bundle)}; signed by {key.key_id} (trusted)\n"
    assert checked.stdout == f"{digest}  {bundle}\n"


def test_trusted_keys_directory_from_environment_and_default(
    tmp_path: Path, bundle: Path, key: keys.GeneratedKey, trusted_dir: Path
) -> None:
    signed(bundle, key)
    unknown = run_cli("verify", bundle, env=env(trusted_dir))
    assert unknown.returncode == 0, unknown.stderr
    assert (
        unknown.stderr == f"{ok_prefix(bundle)}; signed by unknown key {key.key_id} (not trusted)\n"
    )

    shutil.copy(key.public_path, trusted_dir / "release.pub")
    trusted = run_cli("verify", bundle, "--require-signature", env=env(trusted_dir))
    assert trusted.returncode == 0, trusted.stderr
    assert trusted.stderr == f"{ok_prefix(bundle)}; signed by {key.key_id} (trusted)\n"

    config = tmp_path / "config"
    (config / "kbundle" / "trusted-keys").mkdir(parents=True)
    shutil.copy(key.public_path, config / "kbundle" / "trusted-keys" / "release.pub")
    default_env = child_env(XDG_CONFIG_HOME=str(config))
    default_env.pop("KBUNDLE_TRUSTED_KEYS", None)
    by_default = run_cli("verify", bundle, "--require-signature", env=default_env)
    assert by_default.returncode == 0, by_default.stderr
    assert by_default.stderr.endswith(f"; signed by {key.key_id} (trusted)\n")


def test_signature_by_an_unknown_key_fails_when_a_signature_is_required(
    bundle: Path, key: keys.GeneratedKey, other_key: keys.GeneratedKey, trusted_dir: Path
) -> None:
    signed(bundle, key)
    required = run_cli("verify", bundle, "--require-signature", env=env(trusted_dir))
    assert_clean_failure(required, 1)
    assert required.stderr == (
        f"kbundle: error: {bundle} failed verification: kbundle.sig: not signed by a trusted key "
        "(expected a signature by one of the trusted keys directory "
        f"{trusted_dir}, found signed by "
        f"unknown key {key.key_id}); pass the signer's public key with --key, or add it to the "
        "trusted keys directory\n"
    )
    wrong_key = run_cli("verify", bundle, "--key", other_key.public_path, env=env(trusted_dir))
    assert_clean_failure(wrong_key, 1)
    assert wrong_key.stderr == (
        f"kbundle: error: {bundle} failed verification: kbundle.sig: not signed by a trusted key "
        f"(expected a signature by one of the keys passed with --key, found signed by unknown key "
        f"{key.key_id}); pass the signer's public key with --key, or add it to the trusted keys "
        "directory\n"
    )
    # --key replaces the directory: a key trusted there does not widen a gate naming another.
    shutil.copy(key.public_path, trusted_dir / "release.pub")
    assert_clean_failure(
        run_cli("verify", bundle, "--key", other_key.public_path, env=env(trusted_dir)), 1
    )


def test_unsigned_bundle_fails_when_a_key_is_named(
    bundle: Path, key: keys.GeneratedKey, trusted_dir: Path
) -> None:
    result = run_cli("verify", bundle, "--key", key.public_path, env=env(trusted_dir))
    assert_clean_failure(result, 1)
    assert result.stderr == (
        f"kbundle: error: {bundle} failed verification: kbundle.sig: bundle is not signed, and a "
        "signature by a trusted key is required (expected a signature, "
        "found no kbundle.sig member); "
        "sign it with 'kbundle sign BUNDLE --key KEY', or drop --require-signature/--key\n"
    )
    with pytest.raises(SignatureError):
        kbundle.verify(bundle, require_signature=True, trusted_keys=[key.public_path])


def test_forged_environment_block_in_signed_bundle_is_refused(
    tmp_path: Path, bundle: Path, key: keys.GeneratedKey, trusted_dir: Path
) -> None:
    """THREATS 16: the environment is signed with the rest of the manifest."""
    signed(bundle, key)
    head = kbundle.inspect(bundle)

    def forge(data: dict[str, Any]) -> None:
        data["environment"]["keras"]["backend"] = "jax"
        data["environment"]["keras"]["major"] = 2

    forged_manifest = edit_manifest(bundle, forge)
    parse_manifest(forged_manifest)  # a well-formed manifest: only the signature can tell
    forged = rebuild(bundle, tmp_path / "forged.kbundle", forged_manifest, head.signature)
    # Without the signature the forgery is an intact bundle.
    unsigned = rebuild(bundle, tmp_path / "unsigned.kbundle", forged_manifest, None)
    assert run_cli("verify", unsigned, env=env(trusted_dir)).returncode == 0

    expected = (
        f"kbundle: error: {forged} failed verification: "
        f"kbundle.sig: signature by {key.key_id} does "
        "not verify; the manifest was changed after signing, or the signature is damaged; refuse "
        "the bundle\n"
    )
    for extra in ((), ("--key", key.public_path)):
        result = run_cli("verify", forged, *extra, env=env(trusted_dir))
        assert_clean_failure(result, 1)
        assert result.stderr == expected
    with pytest.raises(SignatureError) as caught:
        kbundle.load(forged, trusted_keys=[key.public_path])
    assert [f.location for f in caught.value.findings] == ["kbundle.sig"]


def test_manifest_rewritten_with_new_hashes(
    tmp_path: Path, bundle: Path, other_model_file: Path, key: keys.GeneratedKey, trusted_dir: Path
) -> None:
    """THREATS 2: another model, re-hashed into a consistent manifest, keeping the old signature."""
    signed(bundle, key)
    head = kbundle.inspect(bundle)
    swap = [PayloadFile("model/model.keras", other_model_file, other_model_file.stat().st_size)]

    def make_manifest(digests: Any) -> bytes:
        members = [
            Member(path="model/model.keras", size=swap[0].size, digest=digests["model/model.keras"])
        ]
        # Only the model travels: the fields naming the other members go with them.
        return serialize_manifest(
            replace(head.manifest, members=members, requirements=None, probe=None)
        )

    def forge(path: Path, signature: bytes | None) -> Path:
        with path.open("wb") as out:
            write_bundle(
                out,
                swap,
                make_manifest,
                level=3,
                threads=0,
                mtime=0,
                sign=(lambda _: signature) if signature else None,
                signature_size=len(signature) if signature else 0,
            )
        return path

    tampered_signed = forge(tmp_path / "tampered-signed.kbundle", head.signature)
    tampered_unsigned = forge(tmp_path / "tampered-unsigned.kbundle", None)
    assert kbundle.inspect(tampered_signed).manifest.members[0].digest == file_digest(
        other_model_file
    )

    plain = run_cli("verify", tampered_unsigned, env=env(trusted_dir))
    assert plain.returncode == 0, plain.stderr
    assert plain.stderr.endswith(" verified (integrity-checked, not signed)\n")

    result = run_cli("verify", tampered_signed, "--key", key.public_path, env=env(trusted_dir))
    assert_clean_failure(result, 1)
    assert f"kbundle.sig: signature by {key.key_id} does not verify;" in result.stderr


def _flip_signature_bit(member: bytes) -> bytes:
    document = json.loads(member)
    text = document["signatures"][0]["signature"]
    raw = bytearray(base64.b64decode(text))
    raw[10] ^= 0x01
    document["signatures"][0]["signature"] = base64.b64encode(bytes(raw)).decode()
    return (json.dumps(document, indent=2) + "\n").encode()


def test_flipped_signature_byte_is_an_integrity_failure(
    tmp_path: Path, bundle: Path, key: keys.GeneratedKey, trusted_dir: Path
) -> None:
    signed(bundle, key)
    head = kbundle.inspect(bundle)
    assert head.signature is not None
    # A flip inside a consistent container: only the signature check sees it.
    damaged = rebuild(
        bundle,
        tmp_path / "damaged.kbundle",
        head.manifest_bytes,
        _flip_signature_bit(head.signature),
    )
    result = run_cli("verify", damaged, env=env(trusted_dir))
    assert_clean_failure(result, 1)
    assert (
        f"failed verification: kbundle.sig: signature by {key.key_id} does not verify;"
        in result.stderr
    )
    # A raw byte flip in the file: the header frame's checksum catches it first.
    raw = bytearray(bundle.read_bytes())
    offset = raw.index(head.signature) + head.signature.index(b'"signature": "') + 20
    raw[offset] = ord("A") if raw[offset] != ord("A") else ord("B")
    (tmp_path / "flipped.kbundle").write_bytes(bytes(raw))
    assert_clean_failure(run_cli("verify", tmp_path / "flipped.kbundle", env=env(trusted_dir)), 1)


def test_unknown_signature_algorithm_is_refused(
    tmp_path: Path, bundle: Path, key: keys.GeneratedKey, trusted_dir: Path
) -> None:
    signed(bundle, key)
    head = kbundle.inspect(bundle)
    assert head.signature is not None
    member = head.signature.replace(b'"algorithm": "ed25519"', b'"algorithm": "rsa-pss"')
    odd = rebuild(bundle, tmp_path / "odd.kbundle", head.manifest_bytes, member)
    result = run_cli("verify", odd, env=env(trusted_dir))
    assert_clean_failure(result, 1)
    assert result.stderr == (
        f"kbundle: error: {odd} failed verification: kbundle.sig: signatures[0].algorithm: "
        "unsupported signature algorithm 'rsa-pss'; this kbundle verifies only ed25519 "
        "signatures; refuse the bundle or upgrade kbundle\n"
    )


_KEY_ONE, _KEY_THREE = keys.fingerprint(b"\1" * 32), keys.fingerprint(b"\3" * 32)
_SHORT_SIGNATURE = base64.b64encode(b"\2" * 63).decode()


def _member(**change: Any) -> bytes:
    record = {
        "algorithm": "ed25519",
        "key_id": keys.fingerprint(b"\1" * 32),
        "public_key": base64.b64encode(b"\1" * 32).decode(),
        "signature": base64.b64encode(b"\2" * 64).decode(),
    }
    document: dict[str, Any] = {"version": 1, "signatures": [record]}
    for name, value in change.items():
        if name in document:
            document[name] = value
        elif value is None:
            del record[name]
        else:
            record[name] = value
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    ("member", "message"),
    [
        (b"not json", "kbundle.sig is not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        (b"[" * 100 + b"]" * 100, "kbundle.sig JSON is nested deeper than 64 levels"),
        (_member(version=2), "kbundle.sig: unsupported signature member version 2"),
        (
            _member(signatures=[]),
            "kbundle.sig: signatures: must be a list of 1 to 16 signatures: 0",
        ),
        (
            _member(key_id=_KEY_THREE),
            f"kbundle.sig: signatures[0].key_id: does not match public_key (whose fingerprint is "
            f"{_KEY_ONE}): {_KEY_THREE}",
        ),
        (
            _member(signature=_SHORT_SIGNATURE),
            f"kbundle.sig: signatures[0].signature: must be the canonical base64 of 64 bytes: "
            f"{_SHORT_SIGNATURE[:60]!r}",
        ),
        (
            _member(signature=None),
            "kbundle.sig: signatures[0]: must have exactly the fields "
            "algorithm, key_id, public_key, "
            "signature: found algorithm, key_id, public_key",
        ),
        (
            _member(comment="hi"),
            "kbundle.sig: signatures[0]: must have exactly the fields "
            "algorithm, key_id, public_key, "
            "signature: found algorithm, comment, key_id, public_key, signature",
        ),
    ],
    ids=[
        "not-json",
        "deep",
        "version",
        "empty",
        "key-id",
        "short-signature",
        "missing-field",
        "extra-field",
    ],
)
def test_malformed_signature_member_is_refused(member: bytes, message: str) -> None:
    with pytest.raises(SignatureError) as caught:
        parse_signatures(member)
    assert caught.value.message == message


def test_duplicate_signer_is_refused() -> None:
    one = parse_signatures(_member())
    with pytest.raises(SignatureError) as caught:
        parse_signatures(serialize_signatures(one * 2))
    assert (
        caught.value.message
        == f"kbundle.sig: signatures[1].key_id: the same key signs twice: {one[0].key_id}"
    )


def test_signature_member_has_a_fixed_size(key: keys.GeneratedKey) -> None:
    signing_key = keys.load_signing_key(key.private_path)
    from kbundle.signing.signatures import manifest_signer

    sizes = {len(manifest_signer(signing_key)(b"{}" * n)) for n in (1, 10, 1000)}
    assert sizes == {signature_member_size(1)} == {353}  # the size docs/signing.md states


# --------------------------------------------------------------------------------------------
# pack --sign, and what signing leaves unchanged


def test_pack_sign_gives_the_same_digest_as_an_unsigned_pack(
    tmp_path: Path, model_file: Path, key: keys.GeneratedKey, trusted_dir: Path
) -> None:
    unsigned = run_cli(
        "pack",
        model_file,
        "-o",
        tmp_path / "plain.kbundle",
        env=env(trusted_dir, SOURCE_DATE_EPOCH=EPOCH),
    )
    assert unsigned.returncode == 0, unsigned.stderr
    digest = kbundle.inspect(tmp_path / "plain.kbundle").digest
    result = run_cli(
        "pack",
        model_file,
        "-o",
        tmp_path / "signed.kbundle",
        "--sign",
        key.private_path,
        env=env(trusted_dir, SOURCE_DATE_EPOCH=EPOCH),
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{digest}  {tmp_path / 'signed.kbundle'}\n"
    assert result.stderr.endswith(f"\nsigned by {key.key_id}\n")
    checked = run_cli(
        "verify",
        tmp_path / "signed.kbundle",
        "--key",
        key.public_path,
        "--json",
        env=env(trusted_dir),
    )
    assert checked.returncode == 0, checked.stderr
    report = json.loads(checked.stdout)
    assert report["digest"] == digest
    assert report["signature"] == {
        "state": "trusted",
        "signers": [key.key_id],
        "trusted_signers": [key.key_id],
    }


def test_sign_copies_the_payload_frames_byte_for_byte(bundle: Path, key: keys.GeneratedKey) -> None:
    with bundle.open("rb") as handle:
        before_header = header_region_size(handle)
    before = bundle.read_bytes()
    result = sign_bundle(bundle, keys.load_signing_key(key.private_path))
    assert result.copied
    with bundle.open("rb") as handle:
        after_header = header_region_size(handle)
    after = bundle.read_bytes()
    assert before_header is not None and after_header is not None
    assert after[after_header:] == before[before_header:]
    assert after_header - before_header == 512 + signature_member_size(1) + (
        -signature_member_size(1) % 512
    )


def test_sign_adds_signers_and_replaces_its_own(
    bundle: Path, key: keys.GeneratedKey, other_key: keys.GeneratedKey, trusted_dir: Path
) -> None:
    first = keys.load_signing_key(key.private_path)
    second = keys.load_signing_key(other_key.private_path)
    assert sign_bundle(bundle, first).signers == (key.key_id,)
    assert sign_bundle(bundle, first).signers == (key.key_id,)
    assert sign_bundle(bundle, second).signers == (key.key_id, other_key.key_id)
    shutil.copy(other_key.public_path, trusted_dir / "other.pub")
    result = run_cli("verify", bundle, env=env(trusted_dir))
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        f"{ok_prefix(bundle)}; signed by unknown key {key.key_id} (not trusted), "
        f"{other_key.key_id} (trusted)\n"
    )


def test_sign_restreams_a_bundle_in_another_valid_layout(
    tmp_path: Path, bundle: Path, key: keys.GeneratedKey, trusted_dir: Path
) -> None:
    """A conforming bundle whose first frame is compressed rather than stored (another writer's
    layout) cannot be spliced, so sign re-streams its payload; the result still verifies."""
    data = bundle.read_bytes()
    with bundle.open("rb") as handle:
        header_size = header_region_size(handle)
    assert header_size is not None
    stored_header = data[:header_size]
    content = zstandard.ZstdDecompressor().decompress(stored_header)
    compressed_header = zstandard.ZstdCompressor(level=9, write_checksum=True).compress(content)
    other_layout = tmp_path / "other-layout.kbundle"
    other_layout.write_bytes(compressed_header + data[header_size:])
    assert kbundle.inspect(other_layout).digest == kbundle.inspect(bundle).digest
    result = sign_bundle(
        other_layout, keys.load_signing_key(key.private_path), output=tmp_path / "out.kbundle"
    )
    assert not result.copied
    assert result.digest == kbundle.inspect(bundle).digest
    checked = run_cli(
        "verify", tmp_path / "out.kbundle", "--key", key.public_path, env=env(trusted_dir)
    )
    assert checked.returncode == 0, checked.stderr


def test_sign_leaves_the_original_untouched_on_failure(
    tmp_path: Path, bundle: Path, key: keys.GeneratedKey, trusted_dir: Path
) -> None:
    raw = bytearray(bundle.read_bytes())
    raw[-40] ^= 0xFF  # inside the payload frames
    bundle.write_bytes(bytes(raw))
    listing = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli("sign", bundle, "--key", key.private_path, env=env(trusted_dir))
    assert_clean_failure(result, 1)
    assert bundle.read_bytes() == bytes(raw)
    assert sorted(p.name for p in tmp_path.iterdir()) == listing

    existing = tmp_path / "existing.kbundle"
    existing.write_bytes(b"keep me")
    refused = run_cli(
        "sign", bundle, "--key", key.private_path, "-o", existing, env=env(trusted_dir)
    )
    assert_clean_failure(refused, 2)
    assert (
        refused.stderr
        == f"kbundle: error: bundle {existing} already exists; pass --force (force=True) to replace it\n"
    )
    assert existing.read_bytes() == b"keep me"


# --------------------------------------------------------------------------------------------
# inspect, key files, trusted-keys directory rules


def test_inspect_shows_signer_fingerprints(
    bundle: Path, key: keys.GeneratedKey, trusted_dir: Path
) -> None:
    unsigned = run_cli("inspect", bundle, env=env(trusted_dir))
    assert "\nsigned      no (integrity-checked, not signed)\n" in unsigned.stdout
    signed(bundle, key)
    text = run_cli("inspect", bundle, env=env(trusted_dir))
    assert text.returncode == 0, text.stderr
    assert (
        f"\nsigned      by {key.key_id} (not checked by inspect; run 'kbundle verify')\n"
        in text.stdout
    )
    data = json.loads(run_cli("inspect", bundle, "--json", env=env(trusted_dir)).stdout)
    assert (data["signed"], data["signers"]) == (True, [key.key_id])


def test_openssh_public_key_is_accepted(
    tmp_path: Path, bundle: Path, key: keys.GeneratedKey, trusted_dir: Path
) -> None:
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key(key.private_path.read_bytes(), None)
    line = private.public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH
    )
    (tmp_path / "release-ssh.pub").write_bytes(line + b" release@ci\n")
    assert keys.load_public_key(tmp_path / "release-ssh.pub").key_id == key.key_id
    signed(bundle, key)
    assert (
        run_cli(
            "verify", bundle, "--key", tmp_path / "release-ssh.pub", env=env(trusted_dir)
        ).returncode
        == 0
    )


def test_bad_key_files_are_usage_errors(tmp_path: Path, bundle: Path, trusted_dir: Path) -> None:
    junk = tmp_path / "junk.pub"
    junk.write_text("not a key\n")
    result = run_cli("verify", bundle, "--key", junk, env=env(trusted_dir))
    assert_clean_failure(result, 2)
    assert result.stderr == (
        f"kbundle: error: public key {junk} is not a PEM or OpenSSH public key; "
        "pass the NAME.pub file 'kbundle keygen' wrote\n"
    )
    missing = run_cli("sign", bundle, "--key", tmp_path / "absent.key", env=env(trusted_dir))
    assert_clean_failure(missing, 2)
    assert missing.stderr == (
        f"kbundle: error: private key {tmp_path / 'absent.key'} does not exist; "
        "check the path, or make one with 'kbundle keygen'\n"
    )


def test_trusted_directory_writable_by_others_is_refused(
    bundle: Path, key: keys.GeneratedKey, trusted_dir: Path
) -> None:
    signed(bundle, key)
    shutil.copy(key.public_path, trusted_dir / "release.pub")
    trusted_dir.chmod(0o777)
    result = run_cli("verify", bundle, env=env(trusted_dir))
    assert_clean_failure(result, 2)
    assert result.stderr == (
        f"kbundle: error: trusted keys directory {trusted_dir} can be written by other users "
        f"(mode 0777), so it cannot decide what is trusted; run: chmod go-w {trusted_dir}\n"
    )


def test_missing_trusted_directory_named_by_environment_is_an_error(
    tmp_path: Path, bundle: Path, key: keys.GeneratedKey
) -> None:
    signed(bundle, key)
    with pytest.raises(UsageError) as caught:
        keys.load_trusted_keys(tmp_path / "nowhere")
    assert caught.value.message == f"trusted keys directory {tmp_path / 'nowhere'} does not exist"
    result = run_cli(
        "verify", bundle, env=child_env(KBUNDLE_TRUSTED_KEYS=str(tmp_path / "nowhere"))
    )
    assert_clean_failure(result, 2)


# --------------------------------------------------------------------------------------------
# Without cryptography; TensorFlow stays out of verify


@pytest.fixture
def no_cryptography(tmp_path: Path) -> Path:
    """A directory that, first on sys.path, makes ``import cryptography`` fail for real."""
    shadow = tmp_path / "shadow" / "cryptography"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        "raise ImportError('cryptography is not installed (test shadow)')\n"
    )
    return shadow.parent


def test_without_cryptography_signatures_are_reported_unchecked(
    bundle: Path, key: keys.GeneratedKey, trusted_dir: Path, no_cryptography: Path
) -> None:
    signed(bundle, key)
    shadowed = env(trusted_dir)
    shadowed["PYTHONPATH"] = os.pathsep.join([str(no_cryptography), shadowed["PYTHONPATH"]])
    result = run_cli("verify", bundle, env=shadowed)
    assert result.returncode == 0, result.stderr
    assert result.stderr == (
        f"{ok_prefix(bundle)}; signed by {key.key_id}; signature not checked: the 'cryptography' "
        "package is not installed (pip install 'kbundle[signing]')\n"
    )
    required = run_cli("verify", bundle, "--require-signature", env=shadowed)
    assert_clean_failure(required, 2)
    assert required.stderr == (
        "kbundle: error: checking the bundle's signature needs the 'cryptography' package, which "
        "is not installed; install it with: pip install 'kbundle[signing]'\n"
    )
    signing = run_cli("sign", bundle, "--key", key.private_path, env=shadowed)
    assert_clean_failure(signing, 2)
    assert signing.stderr == (
        "kbundle: error: signing keys need the 'cryptography' package, which is not installed; "
        "install it with: pip install 'kbundle[signing]'\n"
    )


def test_verify_imports_neither_tensorflow_nor_keras(bundle: Path, key: keys.GeneratedKey) -> None:
    signed(bundle, key)
    code = (
        "import sys, kbundle\n"
        f"report = kbundle.verify({str(bundle)!r}, trusted_keys=[{str(key.public_path)!r}])\n"
        "assert report.signature.trusted\n"
        "print(sorted(m for m in ('tensorflow', 'keras', 'tf_keras') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"


# --------------------------------------------------------------------------------------------
# A trusted signature grants code trust; an untrusted signer never does


def _with_bundled_code(model: Any, scratch: Path, fmt: str) -> Extras:
    source = scratch / "scaled.py"
    source.write_text("def scaled(x):\n    return x * 2\n")
    record = CustomObject(
        name="scaled",
        kind="function",
        module="scaled",
        qualname="scaled",
        transport="source",
        source_digest=file_digest(source),
        sources=[SourceFile(module="scaled", path="code/scaled.py")],
    )
    return Extras(
        payload=(PayloadFile("code/scaled.py", source, source.stat().st_size),),
        fields={"custom_objects": [record]},
    )


@pytest.fixture
def code_bundle(tmp_path: Path, model_file: Path) -> Path:
    # The record is written directly (pack's extras hook) so that this test of the trust gate
    # does not depend on the custom-objects collector; tests/test_custom_objects.py covers that.
    return kbundle.pack(model_file, tmp_path / "code.kbundle", extras=_with_bundled_code).path


def test_trusted_signature_lets_bundled_code_load(
    tmp_path: Path,
    code_bundle: Path,
    key: keys.GeneratedKey,
    trusted_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unsigned = run_cli("unpack", code_bundle, "-d", tmp_path / "out", env=env(trusted_dir))
    assert_clean_failure(unsigned, 4)
    assert unsigned.stderr == (
        "kbundle: error: loading would run bundled code nobody trusted: scaled (source); review it "
        "with 'kbundle show-code', then pass --trust-code (trust_code=True), or trust the signer's "
        "public key (--key, or the trusted keys directory)\n"
    )
    assert not (tmp_path / "out").exists()

    signed(code_bundle, key)
    untrusted = run_cli("unpack", code_bundle, "-d", tmp_path / "out", env=env(trusted_dir))
    assert_clean_failure(untrusted, 4)
    assert (
        f"loading would run bundled code nobody trusted: scaled (source); signed by unknown key "
        f"{key.key_id} (not trusted); " in untrusted.stderr
    )
    monkeypatch.setenv("KBUNDLE_TRUSTED_KEYS", str(trusted_dir))
    with pytest.raises(UntrustedCodeError):
        kbundle.load(code_bundle)

    model = kbundle.load(code_bundle, trusted_keys=[key.public_path])
    assert model.name == "signed_tiny"

    shutil.copy(key.public_path, trusted_dir / "release.pub")
    loaded = run_cli("unpack", code_bundle, "-d", tmp_path / "out", "--json", env=env(trusted_dir))
    assert loaded.returncode == 0, loaded.stderr
    report = json.loads(loaded.stdout)
    assert report["loaded"] is True
    assert report["signature"]["state"] == "trusted"


# --------------------------------------------------------------------------------------------
# The deploy-gate examples


def _run_example(
    *args: str | os.PathLike[str], env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def test_deploy_gate_script(
    tmp_path: Path,
    bundle: Path,
    key: keys.GeneratedKey,
    other_key: keys.GeneratedKey,
    trusted_dir: Path,
) -> None:
    script = REPO / "examples" / "deploy_gate.sh"
    gate_env = env(trusted_dir, KBUNDLE=f"{sys.executable} -m kbundle")
    digest = kbundle.inspect(bundle).digest

    unsigned = _run_example("sh", script, bundle, key.public_path, env=gate_env)
    assert unsigned.returncode == 1, unsigned.stderr
    assert unsigned.stderr.endswith(
        f"deploy gate: REFUSED {bundle}: corrupt, tampered with, not the pinned digest, "
        "or not signed by the release key\n"
    )
    assert "kbundle: error: " in unsigned.stderr and "bundle is not signed" in unsigned.stderr

    signed(bundle, key)
    passed = _run_example("sh", script, bundle, key.public_path, digest, env=gate_env)
    assert passed.returncode == 0, passed.stderr
    assert passed.stdout == f"deploy gate: {bundle} is intact and signed by the release key\n"

    wrong_digest = _run_example(
        "sh", script, bundle, key.public_path, "sha256:" + "0" * 64, env=gate_env
    )
    assert wrong_digest.returncode == 1
    assert "bundle digest differs from --expect" in wrong_digest.stderr
    wrong_key = _run_example("sh", script, bundle, other_key.public_path, env=gate_env)
    assert wrong_key.returncode == 1
    missing = _run_example("sh", script, tmp_path / "absent.kbundle", key.public_path, env=gate_env)
    assert missing.returncode == 2
    assert missing.stderr.endswith(
        f"deploy gate: could not check {tmp_path / 'absent.kbundle'} "
        "(bad path or key, not a bundle, "
        "or kbundle[signing] missing)\n"
    )


def test_deploy_gate_python(
    bundle: Path, key: keys.GeneratedKey, other_key: keys.GeneratedKey, trusted_dir: Path
) -> None:
    script = REPO / "examples" / "deploy_gate.py"
    signed(bundle, key)
    digest = kbundle.inspect(bundle).digest
    refused = _run_example(
        sys.executable, script, bundle, other_key.public_path, env=env(trusted_dir)
    )
    assert refused.returncode == 1, refused.stderr
    assert refused.stderr.startswith(
        f"deploy gate: REFUSED {bundle}: {bundle} failed verification: kbundle.sig: "
    )
    served = _run_example(
        sys.executable, script, bundle, key.public_path, digest, env=env(trusted_dir)
    )
    assert served.returncode == 0, served.stderr
    assert served.stdout == (
        f"deploy gate: {bundle} {digest}: signed by {key.key_id} (trusted)\n"
        "deploy gate: serving signed_tiny (10 parameters)\n"
    )
