"""Bundles in an object store against the same client, side by side in one run (issue 16).

Against moto's S3 server, started here as its own process on 127.0.0.1 (``moto_server``), with
a float32 ``.keras`` model of ``--size-mb`` (default 1024) built in code, it times the median
of ``--repeat`` alternating runs of:

* ``kbundle verify s3://...``  vs  downloading the same object to /dev/null with the same
  client (s3fs, one streamed GET read in 1 MiB pieces: what kbundle's reader does, minus the
  verification), each a whole process; target: ≤ 1.1x. ``kbundle verify`` of the same
  bundle as a local file is timed too: where the verification itself is slower than moto's
  download, no overlap brings verify s3:// under it.
* ``kbundle pack -o s3://...`` vs  ``kbundle pack`` to a local file; target ≤ 1.1x. The upload
  of the finished bundle with the same client (s3fs ``put_file``) is timed too, so the table
  also says how much of the upload the pack overlapped: ``pack s3 / (local + upload)`` is 1 with
  no overlap at all, and ``pack s3 / max(local, upload)`` is 1 with complete overlap.

It also reports the bytes ``kbundle inspect s3://...`` transferred (moto's request log is not
needed: the client counts them) and the peak RSS of ``kbundle verify s3://...``. Results go to
benchmarks/results/ as JSON. moto is the slow side of every transfer here (Python, one process,
a temporary file per object): ratios are comparable, seconds are moto's.

    python benchmarks/bench_remote.py                       # 1 GiB
    python benchmarks/bench_remote.py --size-mb 128 --repeat 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_pipeline import (
    REPO,
    _env,
    build_big_model,
    interleaved_medians,
    kbundle_cmd,
    peak_rss_mib,
)

BUCKET = "kbundle-bench"
TARGETS = {"verify": 1.1, "pack": 1.1}
# Fake credentials for moto, and no machine profile or config file.
_AWS = {
    "AWS_ACCESS_KEY_ID": "bench",
    "AWS_SECRET_ACCESS_KEY": "bench",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
}

# The baseline download: the same client (s3fs), one streamed GET read in 1 MiB pieces. Timed
# as a whole process, as `kbundle verify` is: both pay for starting Python and importing s3fs.
_DOWNLOAD = """
import sys
import s3fs
from fsspec.asyn import sync
fs = s3fs.S3FileSystem(endpoint_url=sys.argv[1], skip_instance_cache=True)
async def download():
    stream = await fs.open_async(sys.argv[2], "rb")
    with open("/dev/null", "wb") as sink:
        while data := await stream.read(1 << 20):
            sink.write(data)
sync(fs.loop, download)
"""

# The upload of a finished bundle with the same client.
_UPLOAD = """
import sys, time
import s3fs
fs = s3fs.S3FileSystem(endpoint_url=sys.argv[1], skip_instance_cache=True)
start = time.perf_counter()
fs.put_file(sys.argv[2], sys.argv[3])
print(time.perf_counter() - start)
"""

# kbundle inspect of the object, counting the bytes its range requests returned.
_INSPECT_BYTES = """
import sys
import s3fs
received = 0
original = s3fs.S3FileSystem.cat_file
def counting(self, path, *args, **kwargs):
    global received
    data = original(self, path, *args, **kwargs)
    received += len(data)
    return data
s3fs.S3FileSystem.cat_file = counting
import kbundle
head = kbundle.inspect(sys.argv[2], storage_options={"endpoint_url": sys.argv[1]})
print(received, head.manifest.payload_size)
"""


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, **_AWS},
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server, f"http://127.0.0.1:{port}"
        except OSError:
            time.sleep(0.1)
    server.kill()
    raise RuntimeError("moto_server did not start")


def _child(script: str, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        env={**_env(), **_AWS},
        check=True,
    )
    return (done.stdout.strip().splitlines() or [""])[-1]


def _kbundle(*args: str) -> None:
    done = subprocess.run(
        kbundle_cmd(*args),
        env={**_env(), **_AWS},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if done.returncode:
        raise RuntimeError(f"kbundle {args[0]} failed ({done.returncode}): {done.stderr}")


def bench(size_mb: int, repeat: int, work: Path) -> dict[str, Any]:
    server, endpoint = start_moto()
    try:
        os.environ.update(_AWS)
        import s3fs

        fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
        fs.mkdir(BUCKET)
        model = build_big_model(work, size_mb)
        local = work / "local.kbundle"
        option = ["--storage-option", f"endpoint_url={endpoint}"]
        url = f"s3://{BUCKET}/packed.kbundle"

        def pack_local() -> None:
            _kbundle("pack", str(model), "-o", str(local), "--no-probe", "-q")

        def pack_s3() -> None:
            _kbundle("pack", str(model), "-o", url, "--no-probe", "-q", *option)

        def remove_outputs() -> None:
            # Instead of --force, whose check reads the first bytes of the old object: a
            # range read that moto serves by reading the whole object.
            local.unlink(missing_ok=True)
            if fs.exists(f"{BUCKET}/packed.kbundle"):
                fs.rm(f"{BUCKET}/packed.kbundle")
            fs.invalidate_cache()

        pack_s3_seconds, pack_local_seconds = interleaved_medians(
            [pack_s3, pack_local], repeat, before=remove_outputs
        )
        remove_outputs()  # the last run left one of the two; the reading steps need both
        pack_s3()
        pack_local()
        upload_seconds = float(_child(_UPLOAD, endpoint, str(local), f"{BUCKET}/uploaded.kbundle"))

        def verify_s3() -> None:
            _kbundle("verify", url, "-q", *option)

        def download() -> None:
            _child(_DOWNLOAD, endpoint, f"{BUCKET}/packed.kbundle")

        def verify_local() -> None:
            _kbundle("verify", str(local), "-q")

        # With the same bundle verified from the local file: how much of verify s3:// is the
        # verification itself (on a 2-CPU machine it can be slower than moto's download).
        verify_seconds, download_seconds, verify_local_seconds = interleaved_medians(
            [verify_s3, download, verify_local], repeat
        )
        inspected, payload = map(int, _child(_INSPECT_BYTES, endpoint, url).split())
        rss = peak_rss_mib(kbundle_cmd("verify", url, "-q", *option))
        size = fs.info(f"{BUCKET}/packed.kbundle")["size"]
    finally:
        server.terminate()
        server.wait(timeout=30)
    return {
        "size_mb": size_mb,
        "bundle_bytes": size,
        "payload_bytes": payload,
        "verify_s3": verify_seconds,
        "download": download_seconds,
        "verify_local": verify_local_seconds,
        "pack_s3": pack_s3_seconds,
        "pack_local": pack_local_seconds,
        "upload": upload_seconds,
        "inspect_bytes": inspected,
        "verify_s3_peak_rss_mib": rss,
    }


def print_table(r: dict[str, Any]) -> None:
    verify_ratio = r["verify_s3"] / r["download"]
    pack_ratio = r["pack_s3"] / r["pack_local"]
    bundle, payload = r["bundle_bytes"] / 2**20, r["payload_bytes"] / 2**20
    print(f"\nbundle: {bundle:.0f} MiB ({payload:.0f} MiB payload)")
    print("| step | kbundle | baseline (same client) | ratio | target |")
    print("|---|---|---|---|---|")
    print(
        f"| verify s3:// | {r['verify_s3']:.2f} s | download to /dev/null {r['download']:.2f} s "
        f"| {verify_ratio:.2f}x | ≤ {TARGETS['verify']}x |"
    )
    print(
        f"| (overlap) | {r['verify_s3']:.2f} s | verify of the local file "
        f"{r['verify_local']:.2f} s | "
        f"{r['verify_s3'] / max(r['download'], r['verify_local']):.2f}x of the larger of the "
        "download and the local verify | |"
    )
    print(
        f"| pack -o s3:// | {r['pack_s3']:.2f} s | pack to a local file {r['pack_local']:.2f} s "
        f"| {pack_ratio:.2f}x | ≤ {TARGETS['pack']}x |"
    )
    print(
        f"| (overlap) | {r['pack_s3']:.2f} s | local pack + upload of the bundle "
        f"{r['pack_local']:.2f} + {r['upload']:.2f} s "
        f"| {r['pack_s3'] / (r['pack_local'] + r['upload']):.2f}x of the sum, "
        f"{r['pack_s3'] / max(r['pack_local'], r['upload']):.2f}x of the larger | |"
    )
    print(
        f"\ninspect s3:// transferred {r['inspect_bytes']} bytes of a {r['bundle_bytes']}-byte "
        f"object; verify s3:// peak RSS {r['verify_s3_peak_rss_mib']:.0f} MiB"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mb", type=int, default=1024, help="model size (default 1024)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per side (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kbundle-bench-remote-") as scratch:
        results = bench(args.size_mb, args.repeat, Path(scratch))
    results["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform()}
    print_table(results)
    out = REPO / "benchmarks" / "results"
    out.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (out / f"remote-{stamp}.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
