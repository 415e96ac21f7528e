"""THREATS.md row 17 and "nothing lost under faults": pack and unpack killed mid-way, pack onto
a full file system. Real processes, real signals, a real (namespaced) tmpfs.

tests/test_cli.py kills pack at fixed delays and fills the disk with RLIMIT_FSIZE; here the
kill points come from a seeded RNG (several compression levels, so some kills land in the
write and some after it), the full disk is a 1 MiB tmpfs mounted in a private mount namespace,
and unpack is killed while it is extracting.

The invariant for every kill: whatever exists under the final name is complete and verifies,
and nothing else is left in the output directory. A killed *unpack* cannot remove its hidden
staging directory (``.NAME.*.partial``, SIGKILL cannot be caught); the tests allow exactly
that, never a file at the destination.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO, child_env
from hostile import MODEL_PATH, manifest_record, model_bundle

import kbundle
from kbundle.container.manifest import Member, serialize_manifest
from kbundle.container.writer import PayloadFile, write_bundle


def _kbundle(*args: str | os.PathLike[str], **extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "kbundle", *map(str, args)],
        env=child_env(**extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if not p.is_dir())


# --------------------------------------------------------------------------------------------
# pack


@pytest.fixture(scope="module")
def big_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real .keras file of ~64 MB with random (incompressible) weights: slow to pack at
    level 19, quick to store, so random kill points land both inside and after the write."""
    import keras

    keras.utils.set_random_seed(17)
    model = keras.Sequential([keras.Input((4000,)), keras.layers.Dense(4000, use_bias=False)])
    path = tmp_path_factory.mktemp("big") / "big.keras"
    model.save(path)
    return path


@pytest.mark.slow
@pytest.mark.keras
def test_row17_pack_killed_at_random_points_leaves_nothing_partial(
    big_model: Path, tmp_path: Path
) -> None:
    rng = random.Random(17)
    out = tmp_path / "out"
    scratch = tmp_path / "child-tmp"  # the child's TMPDIR, to see what it leaves there
    out.mkdir()
    scratch.mkdir()
    outcomes = []
    for _ in range(5):
        level = rng.choice(["none", "1", "19"])
        delay = rng.uniform(0.05, 2.5)
        bundle = out / "m.kbundle"
        process = _kbundle(
            "pack", big_model, "-o", bundle, "--level", level, "--quiet", TMPDIR=str(scratch)
        )
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=120)
        outcomes.append((level, round(delay, 2), process.returncode))
        # Only a complete bundle may ever carry the final name; nothing else may be left.
        assert [p.name for p in out.iterdir()] in ([], ["m.kbundle"]), outcomes
        if bundle.exists():
            kbundle.verify(bundle)
            bundle.unlink()
        assert _files(scratch) == [], outcomes
    assert any(code == -signal.SIGKILL for *_, code in outcomes), f"no pack was killed: {outcomes}"


_TMPFS_PACK = """
import json, os, subprocess, sys
out, model = sys.argv[1], sys.argv[2]
mount = ["mount", "-t", "tmpfs", "-o", "size=1m", "kbundle-test", out]
mounted = subprocess.run(mount, capture_output=True, text=True)
if mounted.returncode:
    print(json.dumps({"mounted": False, "why": mounted.stderr.strip()}))
    sys.exit(0)
bundle = os.path.join(out, "m.kbundle")
pack = [sys.executable, "-m", "kbundle", "pack", model, "-o", bundle, "--level", "none"]
done = subprocess.run(pack, capture_output=True, text=True)
usage = os.statvfs(out)
used = (usage.f_blocks - usage.f_bfree) * usage.f_frsize
left = sorted(os.listdir(out))
report = {"code": done.returncode, "stderr": done.stderr, "left": left, "used": used}
print(json.dumps({"mounted": True, **report}))
"""


_ELSEWHERE = "tests/test_cli.py covers a full disk with RLIMIT_FSIZE"


@pytest.mark.keras
def test_row17_pack_onto_a_full_tmpfs_leaves_nothing(keras: Any, tmp_path: Path) -> None:
    """A 1 MiB tmpfs, mounted in a private mount namespace (so nothing outlives the test),
    and a 2.6 MB model: the write fails with ENOSPC part way, as on a full disk."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1) to mount a private tmpfs; " + _ELSEWHERE)
    keras.utils.set_random_seed(3)
    model = tmp_path / "model.keras"
    keras.Sequential([keras.Input((800,)), keras.layers.Dense(800)]).save(model)
    assert model.stat().st_size > 2 * 1024 * 1024
    out = tmp_path / "small-disk"
    out.mkdir()
    namespace = (
        ["unshare", "--mount", "--propagation", "private"]
        if os.geteuid() == 0
        else ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private"]
    )
    done = subprocess.run(
        [*namespace, sys.executable, "-c", _TMPFS_PACK, str(out), str(model)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
        cwd=REPO,
    )
    if done.returncode or not done.stdout.strip():
        pytest.skip(
            f"cannot make a private mount namespace here ({done.stderr.strip()[-200:]}); "
            + _ELSEWHERE
        )
    result = json.loads(done.stdout)
    if not result["mounted"]:
        pytest.skip(f"cannot mount a tmpfs here ({result['why']}); " + _ELSEWHERE)

    assert result["code"] == 2, result
    assert result["stderr"] == (
        f"kbundle: error: no space left on the device while writing {out / 'm.kbundle'}; "
        "free space or write the output elsewhere; nothing was left behind\n"
    )
    assert result["left"] == []
    assert result["used"] == 0  # the anonymous temporary file is gone too, not just unnamed
    assert list(out.iterdir()) == []  # the mount lived and died in the namespace


# --------------------------------------------------------------------------------------------
# unpack


@pytest.fixture(scope="module")
def big_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small file that unpacks to 160 MB (zeros compress to almost nothing), so that
    extraction takes long enough to be caught in the act."""
    directory = tmp_path_factory.mktemp("big-bundle")
    source = directory / "zeros"
    with source.open("wb") as handle:
        handle.truncate(160 * 1024 * 1024)  # sparse: costs no disk until unpacked
    payload = [PayloadFile(MODEL_PATH, source, source.stat().st_size)]

    def make_manifest(digests: Any) -> bytes:
        return serialize_manifest(
            manifest_record(
                [Member(path=MODEL_PATH, size=payload[0].size, digest=digests[MODEL_PATH])]
            )
        )

    bundle = directory / "big.kbundle"
    with bundle.open("w+b") as out:
        write_bundle(out, payload, make_manifest, level=1, threads=0, mtime=0)
    source.unlink()
    return bundle


def _kill_while_extracting(bundle: Path, destination: Path, *extra: str) -> bool:
    """Start ``kbundle unpack`` and SIGKILL it once the model file is half-written in its
    staging directory. Returns False when it finished before it could be caught."""
    process = _kbundle("unpack", bundle, "-d", destination, "--no-load", "--quiet", *extra)
    deadline = time.monotonic() + 120
    try:
        while process.poll() is None and time.monotonic() < deadline:
            partial = list(destination.parent.glob(f".{destination.name}.*.partial/{MODEL_PATH}"))
            if partial and partial[0].stat().st_size > 0:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
    finally:
        process.wait(timeout=120)
    return process.returncode == -signal.SIGKILL


def _staging_only(parent: Path, destination: Path) -> list[str]:
    """What the killed unpack left beside its destination, other than the bundle."""
    return sorted(
        p.name for p in parent.iterdir() if p.name not in (destination.name, "big.kbundle")
    )


@pytest.mark.slow
def test_unpack_killed_mid_extraction_leaves_no_destination(
    big_bundle: Path, tmp_path: Path
) -> None:
    destination = tmp_path / "out"
    caught = _kill_while_extracting(big_bundle, destination)
    if not caught:
        pytest.skip("unpack finished before it could be killed mid-extraction")

    assert not destination.exists()
    leftovers = _staging_only(tmp_path, destination)
    assert leftovers and all(
        name.startswith(".out.") and name.endswith(".partial") for name in leftovers
    ), leftovers
    # The leftover is hidden and never mistaken for the destination: the next unpack succeeds
    # and removes it (its process is gone).
    result = kbundle.unpack(big_bundle, destination)
    assert result.report.files_checked == 1
    assert (destination / MODEL_PATH).stat().st_size == 160 * 1024 * 1024
    assert _staging_only(tmp_path, destination) == []


@pytest.mark.slow
def test_unpack_force_killed_mid_extraction_keeps_the_old_destination(
    big_bundle: Path, tmp_path: Path
) -> None:
    destination = tmp_path / "out"
    previous = model_bundle(tmp_path / "previous.kbundle", {MODEL_PATH: b"the previous unpack"})
    kbundle.unpack(previous, destination)  # --force replaces only an earlier unpack's output
    previous.unlink()
    caught = _kill_while_extracting(big_bundle, destination, "--force")
    if not caught:
        pytest.skip("unpack finished before it could be killed mid-extraction")

    assert _files(destination) == ["kbundle.json", MODEL_PATH]
    assert (destination / MODEL_PATH).read_bytes() == b"the previous unpack"
    assert all(name.endswith(".partial") for name in _staging_only(tmp_path, destination))
