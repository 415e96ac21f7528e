"""Fuzz target for the bundle reader: a mutated bundle verifies, or kbundle refuses it.

The contract, checked for every input by :func:`check_input`:

* ``kbundle.verify``, ``kbundle.inspect`` and ``kbundle.unpack`` either succeed or raise a
  :class:`~kbundle.errors.KbundleError`; any other exception is a bug (and so is a hang:
  pytest-timeout or libFuzzer's ``-timeout`` catches it);
* whatever verifies unpacks to a seed's files, exactly the files its manifest lists with the
  sizes and SHA-256 it gives (checked here independently). A mutation may change only what
  the format leaves free (how the tar stream is compressed, zero bytes after the
  end-of-archive marker) or the manifest itself where it stays well-formed (an unsigned
  bundle's identity changes with it, which ``--expect`` and signatures catch); a mutation
  that changes a file and still verifies went unnoticed;
* verify and unpack agree; a refused unpack leaves no destination and no staging directory,
  and nothing is ever written beside the working directory.

Inputs are seeds (small bundles written by kbundle's own writer, stored, compressed, signed,
with directories, long names and custom-object records) mutated at one of three layers: the
file's bytes, the manifest's bytes (re-framed with a valid checksum), or the tar stream
(re-compressed with a valid trailer), so that mutations reach the manifest parser and the
tar reader rather than dying at the first checksum.

Run it three ways:

* from pytest (``tests/security/test_fuzz_reader.py``): seeded random mutations for a bounded
  time (``KBUNDLE_FUZZ_SECONDS``, default 20; ``KBUNDLE_FUZZ_SEED``, default 0);
* with atheris, coverage-guided (``pip install atheris``)::

      python tests/security/fuzz_reader.py -atheris_runs=100000 -max_total_time=600

* on one saved input: ``python tests/security/fuzz_reader.py --replay FILE``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

if __name__ == "__main__":  # run as a script: the suite's helpers and this checkout first
    sys.path[:0] = [
        str(Path(__file__).resolve().parents[1]),
        str(Path(__file__).resolve().parents[2]),
    ]

import zstandard
from hostile import manifest_record

import kbundle
from kbundle.container.manifest import (
    CustomObject,
    Member,
    PickleInfo,
    SourceFile,
    serialize_manifest,
)
from kbundle.container.writer import PayloadFile, header_region, header_region_size, write_bundle
from kbundle.container.zstdframes import TRAILER_SIZE, trailer_frame
from kbundle.errors import KbundleError

__all__ = ["Chooser", "FuzzBug", "Seed", "build_input", "check_input", "make_seeds", "run_random"]


class FuzzBug(AssertionError):
    """The reader broke its contract on an input."""


class Chooser(Protocol):
    """Where mutation choices come from: a seeded RNG, or atheris's data provider."""

    def integer(self, low: int, high: int) -> int: ...

    def blob(self, max_size: int) -> bytes: ...


class RandomChooser:
    def __init__(self, rng: random.Random) -> None:
        self._rng = rng

    def integer(self, low: int, high: int) -> int:
        return self._rng.randint(low, high)

    def blob(self, max_size: int) -> bytes:
        return self._rng.randbytes(self._rng.randint(0, max_size))


# --------------------------------------------------------------------------------------------
# Seeds


@dataclass(frozen=True)
class Seed:
    """A valid bundle, its layers (the manifest, the signature and the tar stream) and the
    files it unpacks to (member path -> bytes, directories as None)."""

    name: str
    data: bytes
    manifest: bytes
    signature: bytes | None
    tar: bytes
    files: dict[str, bytes | None]


def _write_seed(
    directory: Path,
    name: str,
    files: dict[str, bytes | None],
    level: int | None,
    sign: Callable[[bytes], bytes] | None = None,
    custom: bool = False,
) -> Path:
    sources = directory / f"{name}.src"
    sources.mkdir()
    payload = []
    for index, (member, data) in enumerate(files.items()):
        if data is None:
            payload.append(PayloadFile(member, None))
            continue
        source = sources / str(index)
        source.write_bytes(data)
        payload.append(PayloadFile(member, source, len(data)))

    def make_manifest(digests: dict[str, str]) -> bytes:
        members = [
            Member(path=p.path, type="dir")
            if p.source is None
            else Member(path=p.path, size=p.size, digest=digests[p.path])
            for p in payload
        ]
        manifest = manifest_record(members)
        if custom:
            manifest = replace(
                manifest,
                custom_objects=[
                    CustomObject(
                        name="Scale",
                        kind="layer",
                        module="layers",
                        qualname="Scale",
                        transport="source",
                        sources=[SourceFile(module="layers", path="code/layers.py")],
                    ),
                    CustomObject(
                        name="loss",
                        kind="function",
                        module="__main__",
                        qualname="loss",
                        transport="pickle",
                        pickle=PickleInfo(
                            path="objects/loss.pkl",
                            python="3.11.7",
                            protocol=5,
                            cloudpickle="3.1.1",
                        ),
                    ),
                ],
            )
        return serialize_manifest(manifest)

    path = directory / f"{name}.kbundle"
    signature_size = 0
    if sign is not None:
        from kbundle.container.signature_member import signature_member_size

        signature_size = signature_member_size(1)
    with path.open("w+b") as out:
        write_bundle(
            out,
            payload,
            make_manifest,
            level=level,
            threads=0,
            mtime=0,
            sign=sign,
            signature_size=signature_size,
        )  # type: ignore[arg-type]
    return path


def _signer(directory: Path) -> Callable[[bytes], bytes] | None:
    from kbundle.signing import keys

    if not keys.signing_available():
        return None
    from kbundle.signing.signatures import manifest_signer

    generated = keys.generate_key(directory / "fuzz-key")
    return manifest_signer(keys.load_signing_key(generated.private_path))


def _unpacked(root: Path) -> dict[str, bytes | None]:
    found: dict[str, bytes | None] = {}
    for path in sorted(root.rglob("*")):
        found[path.relative_to(root).as_posix()] = None if path.is_dir() else path.read_bytes()
    return found


def _layers(name: str, path: Path, files: dict[str, bytes | None]) -> Seed:
    data = path.read_bytes()
    head = kbundle.inspect(path)
    with path.open("rb") as handle:
        start = header_region_size(handle)
    assert start is not None
    frames = data[start : len(data) - TRAILER_SIZE]
    tar = (
        zstandard.ZstdDecompressor()
        .stream_reader(io.BytesIO(frames), read_across_frames=True)
        .read()
    )
    return Seed(name, data, head.manifest_bytes, head.signature, tar, files)


def make_seeds(directory: Path) -> list[Seed]:
    """Write the seed bundles under ``directory`` and return them with their layers."""
    rng = random.Random(2026)
    model = {"model/model.keras": b"PK\x03\x04" + rng.randbytes(900)}
    seeds = [
        ("stored", {**model, "env/requirements.txt": b"keras==3.15.0\n"}, None, None, False),
        (
            "compressed",
            {
                "model/assets": None,
                **model,
                "model/assets/" + "long-name-" * 12 + ".txt": bytes(2000),
                "probe/empty": b"",
            },
            3,
            None,
            False,
        ),
        (
            "custom",
            {
                **model,
                "code/layers.py": b"class Scale: pass\n",
                "objects/loss.pkl": rng.randbytes(64),
            },
            3,
            None,
            True,
        ),
    ]
    signer = _signer(directory)
    if signer is not None:
        seeds.append(("signed", model, 3, signer, False))
    made = []
    for name, files, level, sign, custom in seeds:
        path = _write_seed(directory, name, files, level, sign, custom)
        unpacked = kbundle.unpack(path, directory / f"{name}.unpacked").path
        made.append(_layers(name, path, _unpacked(unpacked)))
    return made


# --------------------------------------------------------------------------------------------
# Mutations


_INTERESTING = [
    0,
    1,
    0x7F,
    0x80,
    0xFF,
    0x100,
    0x7FFF,
    0xFFFF,
    0x7FFFFFFF,
    0xFFFFFFFF,
    1 << 32,
    (1 << 63) - 1,
    (1 << 64) - 1,
    511,
    512,
    513,
    1 << 20,
    1 << 30,
]
_TOKENS = [
    b"..",
    b"/",
    b"\\",
    b"\0",
    b"\n",
    b":",
    b"sha256:",
    b"md5:",
    b'"dir"',
    b'"file"',
    b"null",
    b"[",
    b"]",
    b"{",
    b"}",
    b'"',
    b"model/",
    b"code/",
    b"path=",
    b"size=",
    b"GNU.sparse.size=",
    b"kbundle.json",
    b"kbundle.sig",
    b"ustar\x00",
    b"1e999",
    b"-1",
    b"\xc3\xa9",
    b"e\xcc\x81",
    b"\xed\xa0\x80",
]


def _mutate(data: bytes, choose: Chooser, other: bytes) -> bytes:
    size = len(data)
    offset = choose.integer(0, max(size - 1, 0))
    operation = choose.integer(0, 8)
    if operation == 0 and size:  # flip bits in one byte
        return data[:offset] + bytes([data[offset] ^ choose.integer(1, 255)]) + data[offset + 1 :]
    if operation == 1:  # an interesting integer, binary
        width = (1, 2, 4, 8)[choose.integer(0, 3)]
        value = _INTERESTING[choose.integer(0, len(_INTERESTING) - 1)] & ((1 << (8 * width)) - 1)
        order = "little" if choose.integer(0, 1) else "big"
        return data[:offset] + value.to_bytes(width, order) + data[offset + width :]
    if operation == 2:  # an interesting integer, as ASCII octal or decimal (tar, pax, JSON)
        value = _INTERESTING[choose.integer(0, len(_INTERESTING) - 1)]
        text = (f"{value:o}" if choose.integer(0, 1) else str(value)).encode()
        return data[:offset] + text + data[offset + len(text) :]
    if operation == 3:  # insert bytes
        return data[:offset] + choose.blob(64) + data[offset:]
    if operation == 4:  # delete a range
        return data[:offset] + data[offset + choose.integer(1, 600) :]
    if operation == 5:  # truncate
        return data[:offset]
    if operation == 6:  # copy a range elsewhere (duplicated headers, repeated members)
        length = choose.integer(1, 1536)
        target = choose.integer(0, size)
        return data[:target] + data[offset : offset + length] + data[target:]
    if operation == 7:  # splice in the same layer of another seed
        start = choose.integer(0, max(len(other) - 1, 0))
        return data[:offset] + other[start : start + choose.integer(1, 1024)] + data[offset:]
    token = _TOKENS[choose.integer(0, len(_TOKENS) - 1)]  # a token where the parsers branch
    if choose.integer(0, 1):
        return data[:offset] + token + data[offset:]
    return data[:offset] + token + data[offset + len(token) :]


def _framed(manifest: bytes, signature: bytes | None, tar: bytes, level: int) -> bytes:
    frames = zstandard.ZstdCompressor(level=level, write_checksum=True).compress(tar)
    return (
        header_region(manifest, signature) + frames + trailer_frame(hashlib.sha256(frames).digest())
    )


def build_input(seeds: list[Seed], choose: Chooser) -> bytes:
    """A seed, mutated 1-4 times at one layer, re-framed so that only that layer is damaged."""
    seed = seeds[choose.integer(0, len(seeds) - 1)]
    other = seeds[choose.integer(0, len(seeds) - 1)]
    layer = choose.integer(0, 3)
    rounds = choose.integer(1, 4)
    if layer == 0:  # the file itself
        data = seed.data
        for _ in range(rounds):
            data = _mutate(data, choose, other.data)
        return data
    if layer == 1:  # the manifest, in a valid header frame before the seed's payload frames
        manifest = seed.manifest
        for _ in range(rounds):
            manifest = _mutate(manifest, choose, other.manifest)
        with io.BytesIO(seed.data) as handle:
            start = header_region_size(handle)
        assert start is not None
        frames = seed.data[start : len(seed.data) - TRAILER_SIZE]
        return (
            header_region(manifest, seed.signature)
            + frames
            + trailer_frame(hashlib.sha256(frames).digest())
        )
    if layer == 2 and seed.signature is not None:  # the signature member
        signature = seed.signature
        for _ in range(rounds):
            signature = _mutate(signature, choose, other.signature or b"")
        return _framed(seed.manifest, signature, seed.tar, 1)
    tar = seed.tar  # the tar stream, re-compressed with a valid trailer
    for _ in range(rounds):
        tar = _mutate(tar, choose, other.tar)
    return _framed(seed.manifest, seed.signature, tar, 1)


# --------------------------------------------------------------------------------------------
# The contract


def _attempt(action: Callable[[], object]) -> KbundleError | None:
    try:
        action()
    except KbundleError as exc:
        return exc
    return None


def _payload(files: dict[str, bytes | None]) -> dict[str, bytes | None]:
    return {path: data for path, data in files.items() if path != "kbundle.json"}


def _check_verified_content(destination: Path, seeds: list[Seed]) -> None:
    files = _unpacked(destination)
    if not any(_payload(files) == _payload(seed.files) for seed in seeds):
        raise FuzzBug("a mutated bundle verified and unpacked to files no seed has")
    listed = json.loads(files["kbundle.json"] or b"")["members"]
    declared = {m["path"]: m for m in listed if m.get("type", "file") == "file"}  # the default type
    written = {path: data for path, data in _payload(files).items() if data is not None}
    if set(declared) != set(written):
        raise FuzzBug(
            f"unpacked files {sorted(written)} differ from those listed {sorted(declared)}"
        )
    for path, data in written.items():
        if (
            "sha256:" + hashlib.sha256(data).hexdigest() != declared[path]["digest"]
            or len(data) != declared[path]["size"]
        ):
            raise FuzzBug(f"{path} was unpacked with content its manifest entry does not describe")


def check_input(data: bytes, workdir: Path, seeds: list[Seed]) -> str:
    """Run the reader on ``data`` in the empty directory ``workdir``; raise :class:`FuzzBug`
    (or the unexpected exception itself) when the contract is broken. Returns the outcome."""
    bundle = workdir / "input.kbundle"
    destination = workdir / "out"
    bundle.write_bytes(data)
    try:
        verified = _attempt(lambda: kbundle.verify(bundle))
        inspected = _attempt(lambda: kbundle.inspect(bundle))
        unpacked = _attempt(lambda: kbundle.unpack(bundle, destination))
        if verified is None and unpacked is None:
            _check_verified_content(destination, seeds)
        if inspected is not None and verified is None:
            raise FuzzBug(f"inspect refused what verify accepted: {inspected}")
        if (verified is None) != (unpacked is None):
            raise FuzzBug(f"verify and unpack disagree: verify {verified!r}, unpack {unpacked!r}")
        left = sorted(p.name for p in workdir.iterdir())
        expected = ["input.kbundle"] + (["out"] if unpacked is None else [])
        if left != expected:
            raise FuzzBug(f"the working directory holds {left}, expected {expected}")
        if workdir.parent.is_dir() and sorted(p.name for p in workdir.parent.iterdir()) != [
            workdir.name
        ]:
            raise FuzzBug(
                "something was written beside the working directory: "
                f"{sorted(p.name for p in workdir.parent.iterdir())}"
            )
        return "verified" if verified is None else type(verified).__name__
    finally:
        if destination.exists():
            shutil.rmtree(destination)
        bundle.unlink(missing_ok=True)


@dataclass
class FuzzRun:
    """What a bounded run did: inputs tried and how each ended, by outcome."""

    inputs: int
    outcomes: dict[str, int]


def run_random(
    seeds: list[Seed],
    sandbox: Path,
    *,
    seed: int,
    seconds: float,
    on_bug: Callable[[int, bytes, BaseException], None],
) -> FuzzRun:
    """Seeded random mutations for ``seconds``. Input ``i`` is built from ``Random(seed + i)``,
    so any input is rebuilt from its number alone."""
    workdir = sandbox / "work"
    workdir.mkdir()
    outcomes: dict[str, int] = {}
    deadline = time.monotonic() + seconds
    count = 0
    while time.monotonic() < deadline:
        data = build_input(seeds, RandomChooser(random.Random(seed + count)))
        try:
            outcome = check_input(data, workdir, seeds)
        except BaseException as exc:
            if isinstance(exc, KeyboardInterrupt):
                raise
            on_bug(seed + count, data, exc)
            raise
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        count += 1
    return FuzzRun(count, outcomes)


# --------------------------------------------------------------------------------------------
# atheris entry point


def _atheris_main(argv: list[str]) -> None:
    import atheris

    scratch = Path(tempfile.mkdtemp(prefix="kbundle-fuzz-"))
    os.environ["KBUNDLE_TRUSTED_KEYS"] = str(scratch / "trusted")
    (scratch / "trusted").mkdir(mode=0o755)
    (scratch / "seeds").mkdir()
    seeds = make_seeds(scratch / "seeds")
    sandbox = scratch / "sandbox"
    sandbox.mkdir()
    workdir = sandbox / "work"
    workdir.mkdir()

    class ProviderChooser:
        def __init__(self, provider: atheris.FuzzedDataProvider) -> None:
            self._provider = provider

        def integer(self, low: int, high: int) -> int:
            return int(self._provider.ConsumeIntInRange(low, high))

        def blob(self, max_size: int) -> bytes:
            return bytes(self._provider.ConsumeBytes(self._provider.ConsumeIntInRange(0, max_size)))

    def test_one_input(raw: bytes) -> None:
        provider = atheris.FuzzedDataProvider(raw)
        if provider.ConsumeBool():
            data = build_input(seeds, ProviderChooser(provider))
        else:  # the fuzzer's own bytes as a whole file
            data = provider.ConsumeBytes(provider.remaining_bytes())
        check_input(data, workdir, seeds)

    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


def _replay(path: Path) -> None:
    scratch = Path(tempfile.mkdtemp(prefix="kbundle-fuzz-replay-"))
    os.environ["KBUNDLE_TRUSTED_KEYS"] = str(scratch / "trusted")
    (scratch / "trusted").mkdir(mode=0o755)
    (scratch / "seeds").mkdir()
    seeds = make_seeds(scratch / "seeds")
    (scratch / "sandbox" / "work").mkdir(parents=True)
    print(check_input(path.read_bytes(), scratch / "sandbox" / "work", seeds))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--replay"]:
        _replay(Path(sys.argv[2]))
    else:
        import atheris

        atheris.instrument_all()  # kbundle is already imported: instrument what is loaded
        _atheris_main(sys.argv)
