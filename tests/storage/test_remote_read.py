"""Reading bundles where pipelines keep them: S3 (moto's server), HTTP with range support, and
standard input; every server is real and on 127.0.0.1 (tests/conftest.py)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import assert_clean_failure, child_env, run_cli
from storage_servers import Fault, s3_error

import kbundle
from kbundle.container.manifest import (
    FORMAT_VERSION,
    Manifest,
    Member,
    ModelInfo,
    serialize_manifest,
)
from kbundle.container.writer import PayloadFile, header_region_size, write_bundle
from kbundle.env.capture import capture_environment
from kbundle.storage.sources import FIRST_RANGE

MIB = 1024 * 1024
GIB = 1024 * MIB


def _run_with_input(data: bytes, *args: str | Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "kbundle", *map(str, args)],
        input=data,
        capture_output=True,
        env=child_env(),
        timeout=600,
    )


def _stored_zero_bundle(path: Path, size: int) -> Path:
    """A bundle written by kbundle's writer with compression off around a ``size``-byte model
    file of zeros (a sparse file, so cheap to make): the object is as large as it claims."""
    model = path.with_suffix(".zeros")
    with model.open("wb") as handle:
        handle.truncate(size)
    payload = [PayloadFile("model/model.h5", model, size)]

    def make_manifest(digests: Mapping[str, str]) -> bytes:
        return serialize_manifest(
            Manifest(
                format_version=FORMAT_VERSION,
                generator="kbundle storage tests",
                created="2026-01-01T00:00:00Z",
                model=ModelInfo(format="h5", path="model/model.h5"),
                members=[Member(path=p.path, size=p.size, digest=digests[p.path]) for p in payload],
                environment=capture_environment(),
            )
        )

    with path.open("w+b") as out:
        write_bundle(out, payload, make_manifest, level=None, threads=0, mtime=0)
    model.unlink()
    return path


def _header_size(bundle: Path) -> int:
    with bundle.open("rb") as handle:
        size = header_region_size(handle)
    assert size is not None
    return size


def test_verify_streams_a_bundle_from_s3_in_one_get(s3: Any, bundle_file: Path) -> None:
    s3.put("m.kbundle", bundle_file.read_bytes())
    digest = kbundle.inspect(bundle_file).digest

    done = run_cli("verify", s3.url("m.kbundle"), "--expect", digest, *s3.cli_options)

    assert done.returncode == 0, done.stderr
    assert done.stdout == f"{digest}  {s3.url('m.kbundle')}\n"
    (get,) = s3.proxy.matching("GET", rf"^/{s3.name}/m\.kbundle")
    assert get.sent == bundle_file.stat().st_size


def test_verify_reads_http_and_standard_input(http_files: Any, bundle_file: Path) -> None:
    (http_files.root / "m.kbundle").write_bytes(bundle_file.read_bytes())
    digest = kbundle.inspect(bundle_file).digest

    over_http = run_cli("verify", http_files.url("m.kbundle"), "--expect", digest)
    piped = _run_with_input(bundle_file.read_bytes(), "verify", "-", "--expect", digest)

    assert over_http.returncode == 0, over_http.stderr
    assert over_http.stdout == f"{digest}  {http_files.url('m.kbundle')}\n"
    assert piped.returncode == 0, piped.stderr
    assert piped.stdout.decode() == f"{digest}  -\n"


def test_a_presigned_url_is_read_over_http_and_its_signature_never_shown(
    s3: Any, bundle_file: Path, tmp_path: Path
) -> None:
    """The deploy recipe of docs/storage.md: `verify "$(aws s3 presign ...)"` with the http
    extra alone. S3 refuses HEAD on a URL signed for GET (the signature covers the method); the
    proxy answers HEAD as S3 does, since moto does not check signatures."""
    s3.put("m.kbundle", bundle_file.read_bytes())
    url = s3.presign("m.kbundle")
    signature = re.search(r"X-Amz-Signature=([0-9a-f]+)", url)
    assert url.startswith(s3.proxy.endpoint) and signature is not None
    s3.proxy.add(
        Fault(
            "HEAD",
            "X-Amz-Signature=",
            "status",
            status=403,
            body=s3_error("SignatureDoesNotMatch", "The request signature does not match."),
            times=None,
        )
    )
    digest = kbundle.inspect(bundle_file).digest

    verified = run_cli("verify", url, "--expect", digest)
    inspected = run_cli("inspect", url, "--json")
    unpacked = run_cli("unpack", url, "-d", tmp_path / "out", "--no-load", "--expect", digest)

    for done in (verified, inspected, unpacked):
        assert done.returncode == 0, done.stderr
        assert signature.group(1) not in done.stdout + done.stderr
    assert verified.stdout.startswith(f"{digest}  ")
    assert "X-Amz-Signature=<redacted>" in verified.stdout
    assert json.loads(inspected.stdout)["digest"] == digest
    assert (tmp_path / "out" / "model" / "model.keras").is_file()
    assert s3.proxy.matching("HEAD", "X-Amz-Signature=")  # the refusal was met, and got around


@pytest.mark.slow
def test_inspect_of_a_1_gib_bundle_over_http_reads_its_first_frame_only(
    http_files: Any, tmp_path: Path
) -> None:
    bundle = _stored_zero_bundle(http_files.root / "big.kbundle", GIB)
    assert bundle.stat().st_size > GIB

    done = run_cli("inspect", http_files.url("big.kbundle"), "--json")

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["manifest"]["members"][0]["size"] == GIB
    # One range request: the first 64 KiB, which hold the whole header region.
    assert _header_size(bundle) < FIRST_RANGE
    assert http_files.proxy.bytes_sent() == FIRST_RANGE < MIB


@pytest.mark.slow
def test_inspect_and_check_of_a_1_gib_bundle_on_s3_read_its_first_frame_only(
    s3: Any, tmp_path: Path
) -> None:
    bundle = _stored_zero_bundle(tmp_path / "big.kbundle", GIB)
    s3.fs.put_file(str(bundle), s3.path("big.kbundle"))

    inspected = run_cli("inspect", s3.url("big.kbundle"), "--json", *s3.cli_options)
    after_inspect = s3.proxy.bytes_sent()
    checked = run_cli("check", s3.url("big.kbundle"), "--json", *s3.cli_options)

    assert inspected.returncode == 0, inspected.stderr
    assert json.loads(inspected.stdout)["manifest"]["members"][0]["size"] == GIB
    assert checked.returncode in (0, 3), checked.stderr  # the verdict is not the point here
    assert json.loads(checked.stdout)["bundle"] == s3.url("big.kbundle")
    assert _header_size(bundle) < FIRST_RANGE
    assert after_inspect == FIRST_RANGE < MIB
    assert s3.proxy.bytes_sent() == 2 * FIRST_RANGE


def test_check_and_inspect_of_a_remote_bundle_fetch_one_range(
    s3: Any, large_model_file: Path, tmp_path: Path
) -> None:
    """A 21 MB bundle: ``check`` and ``inspect`` fetch its header region with one range request
    each (its size comes from the first frame's header), never its payload."""
    bundle = tmp_path / "large.kbundle"
    kbundle.pack(large_model_file, bundle, level="none", probe=False)
    s3.put("large.kbundle", bundle.read_bytes())

    head = kbundle.inspect(s3.url("large.kbundle"), storage_options=s3.options)
    report = kbundle.check(s3.url("large.kbundle"), storage_options=s3.options)

    assert head.digest == kbundle.inspect(bundle).digest
    assert report.findings
    gets = s3.proxy.matching("GET", rf"^/{s3.name}/large\.kbundle")
    assert len(gets) == 2
    assert all(g.headers["range"] == f"bytes=0-{FIRST_RANGE - 1}" for g in gets)
    assert s3.proxy.bytes_sent() == 2 * FIRST_RANGE < bundle.stat().st_size // 100


def test_unpack_expect_proves_the_bytes_it_read(
    s3: Any, bundle_file: Path, model_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The pinned digest is checked against the manifest read in the same pass as every
    member: an object replaced by another bundle is refused, and nothing is extracted."""
    digest = kbundle.inspect(bundle_file).digest
    s3.put("m.kbundle", bundle_file.read_bytes())
    ok = run_cli(
        "unpack",
        s3.url("m.kbundle"),
        "-d",
        tmp_path / "ok",
        "--expect",
        digest,
        "--no-load",
        *s3.cli_options,
    )
    assert ok.returncode == 0, ok.stderr
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    other = kbundle.pack(model_file, tmp_path / "other.kbundle", probe=False)
    s3.put("m.kbundle", (tmp_path / "other.kbundle").read_bytes())

    refused = run_cli(
        "unpack",
        s3.url("m.kbundle"),
        "-d",
        tmp_path / "replaced",
        "--expect",
        digest,
        "--no-load",
        *s3.cli_options,
    )

    assert_clean_failure(refused, 1)
    assert refused.stderr.startswith(
        f"kbundle: error: {s3.url('m.kbundle')} failed verification: kbundle.json: bundle "
        f"digest differs from --expect (expected {digest}, found {other.digest})"
    ), refused.stderr
    assert not (tmp_path / "replaced").exists()


def test_unpack_reads_standard_input(bundle_file: Path, tmp_path: Path) -> None:
    done = _run_with_input(
        bundle_file.read_bytes(), "unpack", "-", "-d", tmp_path / "out", "--no-load"
    )

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "model" / "model.keras").is_file()


def test_load_verifies_what_it_loads_even_after_a_verify(
    s3: Any, bundle_file: Path, model_file: Path, keras: Any
) -> None:
    """A deploy gate verifies the object, then the server loads it: an object replaced in
    between (one payload byte changed, same manifest) is refused by the load itself."""
    url = s3.url("m.kbundle")
    data = bundle_file.read_bytes()
    s3.put("m.kbundle", data)
    digest = kbundle.verify(url, storage_options=s3.options).head.digest
    model = kbundle.load(url, expect=digest, storage_options=s3.options)
    inputs = np.linspace(-1, 1, 12, dtype="float32").reshape(2, 6)
    np.testing.assert_array_equal(
        model.predict(inputs, verbose=0),
        keras.saving.load_model(model_file).predict(inputs, verbose=0),
    )
    tampered = bytearray(data)
    tampered[_header_size(bundle_file) + 600] ^= 0x01
    s3.put("m.kbundle", bytes(tampered))

    with pytest.raises(kbundle.IntegrityError) as caught:
        kbundle.load(url, expect=digest, storage_options=s3.options)

    assert caught.value.message.startswith(f"{url} failed verification:")


def test_a_truncated_object_is_refused(s3: Any, bundle_file: Path) -> None:
    data = bundle_file.read_bytes()
    s3.put("cut.kbundle", data[: len(data) - 100])

    done = run_cli("verify", s3.url("cut.kbundle"), *s3.cli_options)

    assert_clean_failure(done, 1)
    assert "truncated: the stream ends before its trailer" in done.stderr


def test_show_code_env_export_and_sign_take_urls(
    s3: Any, bundle_file: Path, tmp_path: Path
) -> None:
    s3.put("m.kbundle", bundle_file.read_bytes())
    url = s3.url("m.kbundle")
    key = kbundle.generate_key(tmp_path / "release")

    code = run_cli("show-code", url, *s3.cli_options)
    exported = run_cli("env", "export", url, "--pins", *s3.cli_options)
    signed = run_cli(
        "sign", url, "--key", key.private_path, "-o", s3.url("signed.kbundle"), *s3.cli_options
    )

    assert code.returncode == 0, code.stderr
    assert "carries no custom-object code" in code.stderr
    assert exported.returncode == 0, exported.stderr
    assert "keras==" in exported.stdout
    assert signed.returncode == 0, signed.stderr
    report = kbundle.verify(
        s3.url("signed.kbundle"), trusted_keys=[key.public_path], storage_options=s3.options
    )
    assert report.signature is not None and report.signature.trusted
    assert report.head.digest == kbundle.inspect(bundle_file).digest


def test_sign_in_place_on_s3(s3: Any, bundle_file: Path, tmp_path: Path) -> None:
    s3.put("m.kbundle", bundle_file.read_bytes())
    url = s3.url("m.kbundle")
    key = kbundle.generate_key(tmp_path / "release")

    result = kbundle.sign_bundle(
        url, kbundle.load_signing_key(key.private_path), storage_options=s3.options
    )

    assert result.path == url
    assert result.copied
    report = kbundle.verify(url, trusted_keys=[key.public_path], storage_options=s3.options)
    assert report.signature is not None and report.signature.trusted


def test_a_url_is_never_read_as_a_path(s3: Any) -> None:
    """``s3://`` used to reach the file system as the path ``s3:/...``."""
    done = run_cli("verify", s3.url("absent.kbundle"), *s3.cli_options)

    assert_clean_failure(done, 2)
    assert done.stderr == (
        f"kbundle: error: {s3.url('absent.kbundle')} does not exist; "
        "check the URL: bucket, path and object name\n"
    )


def test_standard_input_must_not_be_a_terminal_for_sign() -> None:
    with pytest.raises(kbundle.UsageError) as caught:
        kbundle.sign_bundle("-", object())  # type: ignore[arg-type]

    assert caught.value.message.startswith("sign reads the bundle twice")


def test_remote_progress_counts_the_bytes_transferred(s3: Any, bundle_file: Path) -> None:
    s3.put("m.kbundle", bundle_file.read_bytes())
    seen: list[tuple[int, int]] = []

    kbundle.verify(
        s3.url("m.kbundle"), storage_options=s3.options, progress=lambda d, t: seen.append((d, t))
    )

    size = bundle_file.stat().st_size
    assert seen[-1] == (size, size)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)


def test_a_hostile_remote_bundle_is_refused_and_the_download_stops(
    http_files: Any, bundle_file: Path
) -> None:
    """A remote bundle is untrusted input like a local one: 64 MiB of garbage after the
    trailer is refused as it is locally, and the download stops soon after the first byte
    refused instead of running to the end of the object."""
    junk = 64 * MIB
    (http_files.root / "m.kbundle").write_bytes(bundle_file.read_bytes() + b"\x01" * junk)

    done = run_cli("verify", http_files.url("m.kbundle"))

    assert_clean_failure(done, 1)
    assert "unexpected data at byte" in done.stderr
    assert http_files.proxy.bytes_sent() < bundle_file.stat().st_size + 32 * MIB


def test_check_reads_a_copy_of_the_header_region_alone(bundle_file: Path, tmp_path: Path) -> None:
    """``env create`` of a URL or of standard input checks the new environment against a copy
    of the bundle's header region (all ``check`` reads): such a copy checks like the bundle."""
    head_only = tmp_path / "head.kbundle"
    head_only.write_bytes(bundle_file.read_bytes()[: _header_size(bundle_file)])

    whole = run_cli("check", bundle_file, "--json")
    copy = run_cli("check", head_only, "--json")

    assert copy.returncode == whole.returncode, copy.stderr
    assert json.loads(copy.stdout)["findings"] == json.loads(whole.stdout)["findings"]


def test_doctor_diagnoses_a_bundle_at_a_url(s3: Any, bundle_file: Path) -> None:
    s3.put("m.kbundle", bundle_file.read_bytes())

    done = run_cli("doctor", s3.url("m.kbundle"), "--json", *s3.cli_options)

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert (report["kind"], report["path"], report["ok"]) == ("bundle", s3.url("m.kbundle"), True)


def test_the_progress_bar_shows_the_transfer_and_its_rate(
    s3: Any, large_model_file: Path, tmp_path: Path
) -> None:
    """On a terminal, ``verify`` of a URL shows the bytes transferred of the object and the
    transfer rate (the bar is drawn on standard error, a pseudo-terminal here)."""
    import os
    import pty

    bundle = tmp_path / "large.kbundle"
    kbundle.pack(large_model_file, bundle, level="none", probe=False)
    s3.put("m.kbundle", bundle.read_bytes())
    leader, follower = pty.openpty()
    verifying = subprocess.Popen(
        [sys.executable, "-m", "kbundle", "verify", s3.url("m.kbundle"), *s3.cli_options],
        stdout=subprocess.DEVNULL,
        stderr=follower,
        env=child_env(COLUMNS="120"),
        stdin=subprocess.DEVNULL,
    )
    os.close(follower)
    shown = b""
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        shown += data
    os.close(leader)

    assert verifying.wait(timeout=120) == 0
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", shown.decode("utf-8", "replace"))
    size = f"{bundle.stat().st_size / 1e6:.1f}"
    assert f"{size}/{size} MB" in text, text[-500:]
    assert re.search(r"verifying .* \d+\.\d MB/s", text), text[-500:]
