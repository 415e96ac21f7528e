"""The reader fuzz target (fuzz_reader.py) run for a bounded time, as CI runs it.

``KBUNDLE_FUZZ_SECONDS`` (default 20) bounds the run and ``KBUNDLE_FUZZ_SEED`` (default 0)
picks the inputs, so CI sees the same inputs every time; a broken contract saves the input
for ``python tests/security/fuzz_reader.py --replay FILE`` and names its number.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import child_env
from fuzz_reader import RandomChooser, build_input, check_input, make_seeds, run_random
from hostile import empty_trusted_keys

FUZZ_SECONDS = float(os.environ.get("KBUNDLE_FUZZ_SECONDS", "20"))
FUZZ_SEED = int(os.environ.get("KBUNDLE_FUZZ_SEED", "0"))


@pytest.fixture
def trusted_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return empty_trusted_keys(tmp_path, monkeypatch)


@pytest.mark.slow
@pytest.mark.timeout(FUZZ_SECONDS * 10 + 120)  # a hang is a bug the timeout reports
def test_reader_survives_bounded_fuzzing(tmp_path: Path, trusted_dir: Path) -> None:
    (tmp_path / "seeds").mkdir()
    seeds = make_seeds(tmp_path / "seeds")
    sandbox = tmp_path / "sandbox"
    sandbox.mkdir()
    # The control: every seed verifies and unpacks.
    (sandbox / "control").mkdir()
    for seed in seeds:
        assert check_input(seed.data, sandbox / "control", seeds) == "verified", seed.name
    (sandbox / "control").rmdir()

    def save(number: int, data: bytes, exc: BaseException) -> None:
        crash = tmp_path / f"crash-{number}.kbundle"
        crash.write_bytes(data)
        sys.stderr.write(
            f"fuzz input {number} broke the contract ({type(exc).__name__}: {exc}); "
            f"saved as {crash}\n"
        )

    run = run_random(seeds, sandbox, seed=FUZZ_SEED, seconds=FUZZ_SECONDS, on_bug=save)

    assert run.inputs > 0
    # The layered mutations get past the first checksum: the manifest rules and the tar
    # reader refuse inputs too, not only the frame checks.
    assert {"IntegrityError", "BundleFormatError"} <= set(run.outcomes), run.outcomes


def test_mutations_are_reproducible_from_their_number(tmp_path: Path, trusted_dir: Path) -> None:
    import random

    seeds = make_seeds(tmp_path)
    first = build_input(seeds, RandomChooser(random.Random(12345)))
    assert build_input(seeds, RandomChooser(random.Random(12345))) == first


def test_atheris_target_runs(tmp_path: Path, trusted_dir: Path) -> None:
    """The coverage-guided entry point, for a few hundred inputs, where atheris is installed."""
    pytest.importorskip("atheris")
    script = Path(__file__).with_name("fuzz_reader.py")
    result = subprocess.run(
        [sys.executable, str(script), "-atheris_runs=300", f"-artifact_prefix={tmp_path}/"],
        capture_output=True,
        text=True,
        env=child_env(KBUNDLE_TRUSTED_KEYS=str(trusted_dir)),
        timeout=600,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Done 300 in " in result.stderr
