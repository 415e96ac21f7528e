"""Writing bundles where pipelines keep them: ``pack -o s3://`` (a multipart upload whose first
part is sent last), ``-o -`` (standard output), other fsspec filesystems; complete or not at
all. The servers are real and on 127.0.0.1 (tests/conftest.py)."""

from __future__ import annotations

import re
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_clean_failure, child_env, run_cli
from storage_servers import Fault

import kbundle

# A file-size limit far below the 21 MB bundle of large_model_file: a pack that wrote a local
# copy of the bundle would fail with EFBIG (Python ignores SIGXFSZ).
_NO_LOCAL_COPY = 4 * 1024 * 1024


def _part_numbers(s3: Any) -> list[int]:
    """The part numbers uploaded, in the order the uploads started."""
    found = []
    for exchange in s3.proxy.matching("PUT", r"partNumber="):
        match = re.search(r"partNumber=(\d+)", exchange.target)
        assert match is not None
        found.append(int(match.group(1)))
    return found


def _pack_in_background(
    store: Any,
    model: Path,
    url: str,
    reached: str,
    tmpdir: Path | None = None,
    method: str = "PUT",
) -> subprocess.Popen[str]:
    """``kbundle pack MODEL -o URL`` started in the background, returned once the ``store``'s
    proxy has seen a ``method`` request matching ``reached`` (a part being uploaded). A child
    that will be killed gets a ``tmpdir`` of its own: SIGKILL leaves its scratch directory
    behind."""
    packing = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kbundle",
            "pack",
            str(model),
            "-o",
            url,
            "--level",
            "none",
            "--no-probe",
            *store.cli_options,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(**({"TMPDIR": str(tmpdir)} if tmpdir else {})),
        stdin=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not store.proxy.matching(method, reached) and time.monotonic() < deadline:
        time.sleep(0.05)
    return packing


def _limited(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def _pack_cli(*args: str | Path, limit: int | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kbundle", "pack", *map(str, args)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=600,
        stdin=subprocess.DEVNULL,
        preexec_fn=(lambda: _limited(limit)) if limit else None,
    )


def test_pack_to_s3_streams_the_upload_with_part_one_last_and_no_local_copy(
    s3: Any, large_model_file: Path, tmp_path: Path
) -> None:
    """The payload goes up as parts 2, 3, ... while it is packed; part 1 (the header region and
    the first 5 MiB) goes last; under a 4 MiB file-size limit, so nothing like a local copy of
    the 21 MB bundle was written; the object verifies against the digest pack printed."""
    url = s3.url("models/m.kbundle")

    done = _pack_cli(
        large_model_file,
        "-o",
        url,
        "--level",
        "none",
        "--no-probe",
        *s3.cli_options,
        limit=_NO_LOCAL_COPY,
    )

    assert done.returncode == 0, done.stderr
    digest, shown = done.stdout.split()
    assert shown == url
    parts = _part_numbers(s3)
    assert len(parts) >= 3
    assert parts[-1] == 1
    assert sorted(parts) == list(range(1, len(parts) + 1))
    assert s3.uploads() == []
    assert kbundle.verify(url, expect=digest, storage_options=s3.options).files_checked > 0
    # The control: the same limit stops a pack that writes the bundle to a local file.
    local = _pack_cli(
        large_model_file,
        "-o",
        tmp_path / "local.kbundle",
        "--level",
        "none",
        "--no-probe",
        limit=_NO_LOCAL_COPY,
    )
    assert_clean_failure(local, 2)
    assert "file size limit reached" in local.stderr


def test_a_small_bundle_goes_up_in_one_put(s3: Any, bundle_file: Path, model_file: Path) -> None:
    url = s3.url("small.kbundle")

    result = kbundle.pack(model_file, url, probe=False, storage_options=s3.options)

    assert result.path == url
    assert s3.proxy.matching("PUT", r"partNumber=") == []
    assert s3.proxy.matching("POST", r"uploads") == []
    (put,) = s3.proxy.matching("PUT", r"/small\.kbundle$")
    assert put.received == result.size == len(s3.get("small.kbundle"))
    assert kbundle.verify(url, expect=result.digest, storage_options=s3.options)


def test_pack_does_not_replace_an_object_without_force(s3: Any, model_file: Path) -> None:
    s3.put("taken.kbundle", b"\x28\xb5\x2f\xfd an older bundle")

    refused = run_cli(
        "pack", model_file, "-o", s3.url("taken.kbundle"), "--no-probe", *s3.cli_options
    )

    assert_clean_failure(refused, 2)
    assert refused.stderr == (
        f"kbundle: error: bundle {s3.url('taken.kbundle')} already exists; "
        "pass --force to replace it\n"
    )
    assert s3.get("taken.kbundle") == b"\x28\xb5\x2f\xfd an older bundle"
    replaced = run_cli(
        "pack", model_file, "-o", s3.url("taken.kbundle"), "--no-probe", "--force", *s3.cli_options
    )
    assert replaced.returncode == 0, replaced.stderr
    assert kbundle.verify(s3.url("taken.kbundle"), storage_options=s3.options)


def test_force_replaces_only_a_bundle(s3: Any, model_file: Path) -> None:
    s3.put("notes.txt", b"someone's notes")

    refused = run_cli(
        "pack", model_file, "-o", s3.url("notes.txt"), "--no-probe", "--force", *s3.cli_options
    )

    assert_clean_failure(refused, 2)
    assert "it is not a kbundle bundle (it starts with 736f6d65)" in refused.stderr
    assert s3.get("notes.txt") == b"someone's notes"


def test_an_object_created_during_pack_is_not_replaced(s3: Any, large_model_file: Path) -> None:
    """The existence check before packing leaves a window; S3's completion closes it
    (If-None-Match: *): an object that appeared meanwhile stays, and the upload is aborted."""
    url = s3.url("race.kbundle")
    # Part 1 goes last: hold it back long enough for another writer to create the object.
    s3.proxy.add(Fault("PUT", r"partNumber=1\b", "delay", seconds=3))
    packing = _pack_in_background(s3, large_model_file, url, r"partNumber=1\b")
    s3.put("race.kbundle", b"the other writer's object")
    _out, err = packing.communicate(timeout=300)

    assert packing.returncode == 2, err
    assert (
        f"kbundle: error: bundle {url} already exists (it appeared while completing the upload of it)"
        in err
    )
    assert s3.get("race.kbundle") == b"the other writer's object"
    assert s3.uploads() == []


def test_pack_to_standard_output_streams_a_bundle_that_verifies(model_file: Path) -> None:
    packed = subprocess.run(
        [sys.executable, "-m", "kbundle", "pack", str(model_file), "-o", "-", "--no-probe"],
        capture_output=True,
        env=child_env(),
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert packed.returncode == 0, packed.stderr
    digest = packed.stderr.decode().strip().splitlines()[-1].split()[0]

    verified = subprocess.run(
        [sys.executable, "-m", "kbundle", "verify", "-", "--expect", digest],
        input=packed.stdout,
        capture_output=True,
        env=child_env(),
        timeout=600,
    )

    assert verified.returncode == 0, verified.stderr
    assert verified.stdout.decode() == f"{digest}  -\n"


def test_pack_refuses_a_terminal_and_json_on_standard_output(model_file: Path) -> None:
    both = run_cli("pack", model_file, "-o", "-", "--json")

    assert both.returncode == 2
    assert (
        '"error": "--json prints on standard output, which carries the bundle with -o -"'
        in both.stdout
    )


def test_pack_to_another_fsspec_filesystem_commits_only_a_whole_bundle(
    tmp_path: Path, model_file: Path
) -> None:
    """Any fsspec filesystem with transactional writes: fsspec's own local filesystem named by
    a ``local://`` URL (``file://`` is a plain path to kbundle) writes a temporary file and
    moves it into place on commit; a pack that fails midway commits nothing."""
    target = tmp_path / "out" / "m.kbundle"
    target.parent.mkdir()
    url = f"local://{target}"

    def fail_midway(done: int, total: int) -> None:
        if done > 0:
            raise KeyboardInterrupt  # the user pressing Ctrl-C while the bundle is written

    with pytest.raises(KeyboardInterrupt):
        kbundle.pack(model_file, url, probe=False, progress=fail_midway)
    assert list(target.parent.iterdir()) == []

    result = kbundle.pack(model_file, url, probe=False)
    assert result.path == url
    assert kbundle.verify(target, expect=result.digest)
    assert [p.name for p in target.parent.iterdir()] == ["m.kbundle"]


def test_a_failed_pack_leaves_no_object_and_aborts_the_upload(
    s3: Any, large_model_file: Path
) -> None:
    """Part 3 is refused every time (a reset connection): the retries give up, pack fails with
    one line, no object appears and the multipart upload is aborted (no stored parts)."""
    s3.proxy.add(Fault("PUT", r"partNumber=3\b", "reset_request", times=None))

    failed = run_cli(
        "pack",
        large_model_file,
        "-o",
        s3.url("m.kbundle"),
        "--level",
        "none",
        "--no-probe",
        *s3.cli_options,
    )

    assert_clean_failure(failed, 2)
    assert re.fullmatch(
        rf"kbundle: error: the connection failed while uploading {re.escape(s3.url('m.kbundle'))} "
        r"\(5 attempts\): .*; check the network and the endpoint \(--storage-option endpoint_url=...\)\n",
        failed.stderr,
    ), failed.stderr
    # Five attempts; aiohttp itself sends an idempotent request again, once, when a reused
    # connection breaks, so the store may see up to twice as many.
    assert 5 <= len(s3.proxy.matching("PUT", r"partNumber=3\b")) <= 10
    assert not s3.exists("m.kbundle")
    assert s3.uploads() == []
    assert len(s3.proxy.matching("DELETE", r"uploadId=")) == 1


def test_an_interrupted_pack_leaves_no_object_and_aborts_the_upload(
    s3: Any, large_model_file: Path
) -> None:
    """Ctrl-C while parts are being uploaded: exit 130, the upload aborted, no object."""
    s3.proxy.add(Fault("PUT", r"partNumber=3\b", "delay", seconds=30))
    packing = _pack_in_background(s3, large_model_file, s3.url("m.kbundle"), r"partNumber=3\b")
    packing.send_signal(signal.SIGINT)
    _out, err = packing.communicate(timeout=120)

    assert packing.returncode == 130, err
    assert err.endswith("kbundle: interrupted; no partial output was left behind\n"), err
    assert not s3.exists("m.kbundle")
    assert s3.uploads() == []


def test_a_killed_pack_leaves_no_object(s3: Any, large_model_file: Path, tmp_path: Path) -> None:
    """kill -9 aborts nothing, but no object appears: S3 shows an upload only when completed
    (the stored parts wait for a lifecycle rule, docs/storage.md)."""
    s3.proxy.add(Fault("PUT", r"partNumber=3\b", "delay", seconds=30))
    packing = _pack_in_background(
        s3, large_model_file, s3.url("m.kbundle"), r"partNumber=3\b", tmpdir=tmp_path
    )
    packing.kill()
    packing.communicate(timeout=60)

    assert not s3.exists("m.kbundle")
    assert len(s3.uploads()) == 1


def _pack_and_verify_with_no_local_copy(store: Any, model: Path) -> None:
    """Pack ``model`` (21 MB) to the ``store`` under a file-size limit that a local copy of the
    bundle would exceed, then verify it where it was written."""
    url = store.url("m.kbundle")
    done = _pack_cli(
        model, "-o", url, "--level", "none", "--no-probe", *store.cli_options, limit=_NO_LOCAL_COPY
    )
    assert done.returncode == 0, done.stderr
    verified = run_cli("verify", url, "--expect", done.stdout.split()[0], *store.cli_options)
    assert verified.returncode == 0, verified.stderr


def _assert_denied_and_nothing_left(
    failed: subprocess.CompletedProcess[str], store: Any, status: int
) -> None:
    """A pack to ``store`` refused midway with ``status``: one line, exit 2, no object."""
    assert_clean_failure(failed, 2)
    assert failed.stderr.startswith(
        f"kbundle: error: access to {store.url('m.kbundle')} was denied while uploading "
        f"({status}); check the credentials"
    ), failed.stderr
    assert failed.stderr.count("\n") == 1, failed.stderr
    assert not store.exists("m.kbundle")


def _interrupt_on_the_third(store: Any, model: Path, method: str, upload: str) -> None:
    """Pack ``model`` to ``store`` and press Ctrl-C while the third ``method`` request matching
    ``upload`` (a chunk, a block) is held up by the proxy: exit 130, no object."""
    store.proxy.add(Fault(method, upload, "delay", skip=2, seconds=30))
    packing = _pack_in_background(store, model, store.url("m.kbundle"), upload, method=method)
    while len(store.proxy.matching(method, upload)) < 3 and packing.poll() is None:
        time.sleep(0.05)
    packing.send_signal(signal.SIGINT)
    _out, err = packing.communicate(timeout=120)

    assert packing.returncode == 130, err
    assert err.endswith("kbundle: interrupted; no partial output was left behind\n"), err
    assert not store.exists("m.kbundle")


# GCS (gcp-storage-emulator, which speaks the JSON API and resumable uploads, on 127.0.0.1):
# an upload session whose chunks go up while the bundle is packed, finalised by the last one.
_GCS_CHUNK = r"uploadType=resumable&.*upload_id="


def _cancel_as_gcs_does(gcs: Any) -> None:
    """The emulator does not implement cancelling an upload session (a DELETE of its URL);
    the proxy answers as GCS does, 499."""
    gcs.proxy.add(Fault("DELETE", r"upload_id=", "status", status=499, times=None))


def test_pack_to_gcs_is_one_resumable_upload_with_no_local_copy(
    gcs: Any, large_model_file: Path
) -> None:
    _pack_and_verify_with_no_local_copy(gcs, large_model_file)

    (started,) = gcs.proxy.matching("POST", r"uploadType=resumable(&ifGenerationMatch=0)?$")
    assert "ifGenerationMatch=0" in started.target  # the store refuses to replace at completion
    chunks = gcs.proxy.matching("POST", _GCS_CHUNK)
    assert len(chunks) >= 4 and sum(c.received for c in chunks) > 20 << 20


def test_a_failed_gcs_pack_leaves_no_object_and_cancels_the_upload(
    gcs: Any, large_model_file: Path
) -> None:
    """The third chunk is refused (401: the token expired midway): pack fails with one line
    and no traceback (gcsfs logs its give-up with one), no object appears, and the upload
    session is cancelled."""
    expired = b'{"error": {"code": 401, "message": "Request had expired credentials."}}'
    gcs.proxy.add(Fault("POST", _GCS_CHUNK, "status", status=401, body=expired, skip=2, times=None))
    _cancel_as_gcs_does(gcs)

    args = ("pack", large_model_file, "-o", gcs.url("m.kbundle"), "--no-probe", *gcs.cli_options)

    failed = run_cli(*args, "--level", "none")

    _assert_denied_and_nothing_left(failed, gcs, 401)
    assert len(gcs.proxy.matching("POST", _GCS_CHUNK)) == 3  # a 401 is not tried again
    assert len(gcs.proxy.matching("DELETE", r"upload_id=")) == 1
    # KBUNDLE_DEBUG=1 lets gcsfs's own record of the failure through, for bug reports.
    debugged = run_cli(*args, "--level", "none", env=child_env(KBUNDLE_DEBUG="1"))
    assert debugged.returncode == 2
    assert "Traceback" in debugged.stderr and failed.stderr in debugged.stderr


def test_an_interrupted_gcs_pack_leaves_no_object(gcs: Any, large_model_file: Path) -> None:
    """Ctrl-C while a chunk is on its way: exit 130, the session cancelled, no object."""
    _cancel_as_gcs_does(gcs)
    _interrupt_on_the_third(gcs, large_model_file, "POST", _GCS_CHUNK)
    assert len(gcs.proxy.matching("DELETE", r"upload_id=")) == 1


def test_a_gcs_object_that_appears_during_pack_is_not_replaced(gcs: Any, model_file: Path) -> None:
    """The upload asks GCS to create, never replace (ifGenerationMatch=0); GCS answers 412 when
    an object appeared meanwhile. The emulator does not check the condition, so the proxy
    answers as GCS does; with --force the condition is not asked."""
    refused = Fault(
        "POST",
        r"ifGenerationMatch=0",
        "status",
        status=412,
        body=b'{"error": {"code": 412, "message": "At least one of the pre-conditions you '
        b'specified did not hold."}}',
        times=None,
    )
    gcs.proxy.add(refused)

    done = run_cli("pack", model_file, "-o", gcs.url("m.kbundle"), "--no-probe", *gcs.cli_options)
    forced = run_cli(
        "pack", model_file, "-o", gcs.url("m.kbundle"), "--no-probe", "--force", *gcs.cli_options
    )

    assert_clean_failure(done, 2)
    assert done.stderr.startswith(
        f"kbundle: error: bundle {gcs.url('m.kbundle')} already exists (it appeared while "
    ), done.stderr
    assert refused.applied >= 1
    assert forced.returncode == 0, forced.stderr
    assert refused.applied == len(gcs.proxy.matching("POST", r"ifGenerationMatch=0"))
    assert gcs.exists("m.kbundle")


# Azure (azurite, Microsoft's emulator, on 127.0.0.1): blocks staged while the bundle is packed,
# the object made by committing the block list at the end.
_AZ_BLOCK = r"comp=block(&|$)"
_AZ_BLOCK_LIST = r"comp=blocklist"


def test_pack_to_azure_stages_blocks_and_commits_them_once(
    azure: Any, large_model_file: Path
) -> None:
    _pack_and_verify_with_no_local_copy(azure, large_model_file)

    blocks = azure.proxy.matching("PUT", _AZ_BLOCK)
    (committed,) = azure.proxy.matching("PUT", _AZ_BLOCK_LIST)
    assert len(blocks) >= 2 and sum(b.received for b in blocks) > 20 << 20
    assert committed.headers.get("if-none-match") == "*"  # create, never replace


def test_a_failed_azure_pack_leaves_no_object(azure: Any, large_model_file: Path) -> None:
    """A block refused (403) fails the pack with one line; the staged blocks are never
    committed, so no object appears (Azure drops uncommitted blocks after a week)."""
    azure.proxy.add(Fault("PUT", _AZ_BLOCK, "status", status=403, skip=1, times=None))

    failed = run_cli(
        "pack",
        large_model_file,
        "-o",
        azure.url("m.kbundle"),
        "--level",
        "none",
        "--no-probe",
        *azure.cli_options,
    )

    _assert_denied_and_nothing_left(failed, azure, 403)
    assert azure.proxy.matching("PUT", _AZ_BLOCK_LIST) == []


def test_an_interrupted_azure_pack_leaves_no_object(azure: Any, large_model_file: Path) -> None:
    """Ctrl-C while a block is on its way: exit 130, and the blocks staged so far are never
    committed, not even when the abandoned file object is collected at exit (fsspec's files
    finalise an upload when closed)."""
    _interrupt_on_the_third(azure, large_model_file, "PUT", _AZ_BLOCK)
    assert azure.proxy.matching("PUT", _AZ_BLOCK_LIST) == []


def test_an_azure_object_created_during_pack_is_not_replaced(
    azure: Any, large_model_file: Path
) -> None:
    """Another writer creates the object while the bundle is being uploaded: azurite refuses
    the block list (If-None-Match: *), pack says so, and the other object is intact."""
    azure.proxy.add(Fault("PUT", _AZ_BLOCK, "delay", seconds=3, skip=1))
    packing = _pack_in_background(azure, large_model_file, azure.url("m.kbundle"), _AZ_BLOCK)
    azure.put("m.kbundle", b"someone else's object")
    _out, err = packing.communicate(timeout=120)

    assert packing.returncode == 2, err
    assert err.startswith(
        f"kbundle: error: bundle {azure.url('m.kbundle')} already exists (it appeared while "
    ), err
    assert azure.get("m.kbundle") == b"someone else's object"
