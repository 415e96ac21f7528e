"""Faults on the wire, injected by a real proxy in front of real servers (storage_servers.py):
connections reset mid-download and mid-upload, a 500 on one part, throttling, access denied;
and what the user sees: one line, the right exit code, never a credential."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_clean_failure, child_env, run_cli
from storage_servers import Fault, s3_error

import kbundle

SLOW_DOWN = s3_error("SlowDown", "Please reduce your request rate.")


@pytest.fixture(scope="module")
def large_bundle(tmp_path_factory: pytest.TempPathFactory, large_model_file: Path) -> Path:
    """A 21 MB stored bundle: downloads and uploads of many chunks and parts."""
    path = tmp_path_factory.mktemp("bundles") / "large.kbundle"
    kbundle.pack(large_model_file, path, level="none", probe=False)
    return path


def _range_start(exchange: Any) -> int:
    match = re.fullmatch(r"bytes=(\d+)-\d*", exchange.headers.get("range", ""))
    assert match is not None, exchange.headers
    return int(match.group(1))


def test_a_download_reset_midway_resumes_where_it_broke(s3: Any, large_bundle: Path) -> None:
    s3.put("m.kbundle", large_bundle.read_bytes())
    # The client reads what arrived before the reset (on a loaded machine it may not have read
    # any of it yet, and a reset discards unread bytes: then the download starts over).
    s3.proxy.add(
        Fault("GET", rf"^/{s3.name}/m\.kbundle", "reset_response", after_bytes=3 << 20, seconds=2)
    )
    digest = kbundle.inspect(large_bundle).digest

    done = run_cli("verify", s3.url("m.kbundle"), "--expect", digest, *s3.cli_options)

    assert done.returncode == 0, done.stderr
    first, *resumed = s3.proxy.matching("GET", rf"^/{s3.name}/m\.kbundle")
    assert first.fault == "reset_response" and first.sent == 3 << 20
    # The rest came in ranges from where the stream broke (whatever of it had arrived).
    assert resumed and _range_start(resumed[0]) <= 3 << 20
    assert sum(e.sent for e in resumed) == large_bundle.stat().st_size - _range_start(resumed[0])


def test_an_http_download_reset_midway_resumes_for_unpack(
    http_files: Any, large_bundle: Path, tmp_path: Path
) -> None:
    (http_files.root / "m.kbundle").write_bytes(large_bundle.read_bytes())
    http_files.proxy.add(Fault("GET", r"^/m\.kbundle", "reset_response", after_bytes=5 << 20))

    done = run_cli("unpack", http_files.url("m.kbundle"), "-d", tmp_path / "out", "--no-load")

    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "model" / "model.keras").stat().st_size > 20 << 20


def test_an_upload_reset_midway_and_a_500_on_a_part_are_retried(
    s3: Any, large_model_file: Path
) -> None:
    s3.proxy.add(Fault("PUT", r"partNumber=2\b", "reset_request"))
    s3.proxy.add(
        Fault(
            "PUT",
            r"partNumber=3\b",
            "status",
            status=500,
            body=s3_error("InternalError", "We encountered an internal error."),
        )
    )

    done = run_cli(
        "pack",
        large_model_file,
        "-o",
        s3.url("m.kbundle"),
        "--level",
        "none",
        "--no-probe",
        *s3.cli_options,
    )

    assert done.returncode == 0, done.stderr
    part2 = s3.proxy.matching("PUT", r"partNumber=2\b")
    part3 = s3.proxy.matching("PUT", r"partNumber=3\b")
    assert [e.fault for e in part2][:1] == ["reset_request"] and part2[-1].status == 200
    assert [e.status for e in part3] == [500, 200]
    assert s3.uploads() == []
    assert kbundle.verify(
        s3.url("m.kbundle"), expect=done.stdout.split()[0], storage_options=s3.options
    )


def test_a_throttled_request_is_retried(s3: Any, bundle_file: Path) -> None:
    s3.put("m.kbundle", bundle_file.read_bytes())
    s3.proxy.add(Fault("GET", rf"^/{s3.name}/m\.kbundle", "status", status=503, body=SLOW_DOWN))

    done = run_cli("verify", s3.url("m.kbundle"), *s3.cli_options)

    assert done.returncode == 0, done.stderr
    assert [e.status for e in s3.proxy.matching("GET", rf"^/{s3.name}/m\.kbundle")] == [503, 200]


def test_persistent_throttling_is_one_clear_line(s3: Any, bundle_file: Path) -> None:
    s3.put("m.kbundle", bundle_file.read_bytes())
    s3.proxy.add(
        Fault("GET", rf"^/{s3.name}/m\.kbundle", "status", status=503, body=SLOW_DOWN, times=None)
    )

    done = run_cli("verify", s3.url("m.kbundle"), *s3.cli_options)

    assert_clean_failure(done, 2)
    assert done.stderr == (
        f"kbundle: error: the store is throttling requests for {s3.url('m.kbundle')} "
        "(503 SlowDown) while reading (5 attempts); wait and run again, or lower the "
        "request rate on this bucket\n"
    )
    assert len(s3.proxy.matching("GET", rf"^/{s3.name}/m\.kbundle")) == 5


def test_persistent_http_503_on_a_range_read_is_reported_as_throttling(
    http_files: Any, bundle_file: Path
) -> None:
    (http_files.root / "m.kbundle").write_bytes(bundle_file.read_bytes())
    http_files.proxy.add(Fault("GET", r"^/m\.kbundle", "status", status=503, times=4))

    recovered = run_cli("inspect", http_files.url("m.kbundle"))
    http_files.proxy.add(Fault("GET", r"^/m\.kbundle", "status", status=503, times=None))
    refused = run_cli("inspect", http_files.url("m.kbundle"))

    assert recovered.returncode == 0, recovered.stderr
    assert_clean_failure(refused, 2)
    assert refused.stderr.startswith(
        f"kbundle: error: the store is throttling requests for {http_files.url('m.kbundle')} "
        "(503) while reading (5 attempts)"
    ), refused.stderr


def test_access_denied_is_reported_at_once(s3: Any, bundle_file: Path) -> None:
    s3.put("m.kbundle", bundle_file.read_bytes())
    s3.proxy.add(Fault("HEAD", rf"^/{s3.name}/m\.kbundle", "status", status=403, times=None))

    done = run_cli("verify", s3.url("m.kbundle"), *s3.cli_options)

    assert_clean_failure(done, 2)
    assert done.stderr == (
        f"kbundle: error: access to {s3.url('m.kbundle')} was denied while looking up (403); "
        "check the credentials: the environment, the profile, or --storage-option "
        "(storage_options=); kbundle uses the filesystem's usual sources\n"
    )
    assert len(s3.proxy.matching("HEAD", rf"^/{s3.name}/m\.kbundle")) == 1


def test_an_expired_presigned_url_is_denied_not_missing(s3: Any, bundle_file: Path) -> None:
    """fsspec's HTTP filesystem reports any failed lookup as a missing file; the 403 behind it
    is what the user must see, with what to do about a presigned URL."""
    s3.put("m.kbundle", bundle_file.read_bytes())
    url = s3.presign("m.kbundle")
    expired = s3_error("AccessDenied", "Request has expired")
    for method in ("HEAD", "GET"):
        s3.proxy.add(
            Fault(method, "X-Amz-Signature=", "status", status=403, body=expired, times=None)
        )

    done = run_cli("verify", url)

    assert_clean_failure(done, 2)
    shown = re.sub(r"=[^&]+", "=<redacted>", url.split("?", 1)[1])
    assert done.stderr == (
        f"kbundle: error: access to {url.split('?', 1)[0]}?{shown} was denied while looking up "
        "(403); a presigned URL may have expired or been signed for another object: sign a new "
        "one; a server that wants a header takes --storage-option "
        "'client_kwargs={\"headers\": {...}}'\n"
    )


def test_credentials_in_a_url_are_never_printed(http_files: Any, bundle_file: Path) -> None:
    """A presigned URL carries its credential and signature in the query, and a URL may carry
    a user and password: messages show the URL without them, even when another library's
    message quotes it."""
    (http_files.root / "m.kbundle").write_bytes(bundle_file.read_bytes())
    http_files.proxy.add(Fault("GET", r"^/m\.kbundle", "status", status=400, times=None))
    secret_url = (
        f"http://reader:pa55w0rd-xyz@127.0.0.1:{http_files.proxy.port}/m.kbundle"
        "?X-Amz-Credential=AKIAEXAMPLECRED&X-Amz-Signature=f00dfeedsignature"
    )

    done = run_cli("inspect", secret_url)

    assert_clean_failure(done, 2)
    for secret in ("pa55w0rd", "reader:", "AKIAEXAMPLECRED", "f00dfeedsignature"):
        assert secret not in done.stderr, done.stderr
    shown = (
        f"http://127.0.0.1:{http_files.proxy.port}/m.kbundle"
        "?X-Amz-Credential=<redacted>&X-Amz-Signature=<redacted>"
    )
    assert done.stderr.startswith(f"kbundle: error: reading {shown} failed: "), done.stderr


def test_storage_option_secrets_are_never_printed(s3: Any, bundle_file: Path) -> None:
    """A store's message that quotes a credential (some echo the key they refused) is shown
    with the credential taken out."""
    s3.put("m.kbundle", bundle_file.read_bytes())
    echo = s3_error("InvalidArgument", "The key 'sekrit-value-1234' is not valid here.")
    s3.proxy.add(Fault("HEAD", rf"^/{s3.name}/m\.kbundle", "status", status=400, body=echo))
    s3.proxy.add(Fault("GET", rf"^/{s3.name}/m\.kbundle", "status", status=400, body=echo))

    done = run_cli(
        "verify",
        s3.url("m.kbundle"),
        *s3.cli_options,
        "--storage-option",
        "key=kbundle-test-key-id",
        "--storage-option",
        "secret=sekrit-value-1234",
        "--storage-option",
        "skip_instance_cache=true",
    )

    assert_clean_failure(done, 2)
    assert "sekrit-value-1234" not in done.stderr, done.stderr
    assert "<redacted>" in done.stderr, done.stderr


def test_a_missing_extra_is_named_in_one_line(tmp_path: Path) -> None:
    shim = tmp_path / "no-s3fs" / "s3fs"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 's3fs'\", name='s3fs')\n"
    )
    env = child_env()
    env["PYTHONPATH"] = f"{shim.parent}:{env['PYTHONPATH']}"

    done = run_cli("verify", "s3://bucket/m.kbundle", env=env)

    assert_clean_failure(done, 2)
    assert done.stderr.endswith("; pip install 'kbundle[s3]'\n"), done.stderr
    assert len(done.stderr.splitlines()) == 1
