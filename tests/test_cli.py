"""The command line as users run it: exit codes, messages, no TensorFlow where it is not
needed, nothing lost when pack fails or is killed."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import assert_clean_failure, child_env, run_cli

from kbundle.container.zstdframes import ZSTD_MAGIC

NO_TF_PROBE = """
import atexit, runpy, sys
def report():
    heavy = sorted(m for m in ("tensorflow", "keras", "tf_keras", "h5py", "jax", "torch") if m in sys.modules)
    sys.stderr.write("HEAVY:" + ",".join(heavy) + "\\n")
atexit.register(report)
sys.argv = ["kbundle", *sys.argv[1:]]
runpy.run_module("kbundle", run_name="__main__")
"""


def _heavy_modules(*args: str | os.PathLike[str]) -> tuple[subprocess.CompletedProcess[str], str]:
    result = subprocess.run(
        [sys.executable, "-c", NO_TF_PROBE, *map(str, args)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=120,
    )
    line = [entry for entry in result.stderr.splitlines() if entry.startswith("HEAVY:")]
    return result, line[-1] if line else "HEAVY:?"


def test_import_kbundle_does_not_import_tensorflow() -> None:
    code = "import sys, kbundle; print(sorted(m for m in ('tensorflow', 'keras', 'tf_keras', 'h5py') if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), timeout=60
    )
    assert result.stdout.strip() == "[]", result.stderr


def test_pack_verify_inspect_of_a_file_do_not_import_tensorflow(
    saved_keras_file: Path, tmp_path: Path
) -> None:
    """verify and inspect import nothing heavy; pack of a file reads its HDF5 weights with
    h5py (the pre-load checks) but never imports TensorFlow or Keras without --probe."""
    bundle = tmp_path / "m.kbundle"
    pack = ["pack", saved_keras_file, "-o", bundle]
    if "--no-probe" in run_cli("pack", "--help").stdout:
        pack.append("--no-probe")
    expected = {"pack": "HEAVY:h5py", "verify": "HEAVY:", "inspect": "HEAVY:"}
    for args in (pack, ["verify", bundle], ["inspect", bundle], ["inspect", bundle, "--json"]):
        result, heavy = _heavy_modules(*args)
        assert result.returncode == 0, result.stderr
        assert heavy == expected[str(args[0])], (args, heavy)


def test_pack_refuses_to_overwrite_and_keeps_the_original(
    saved_keras_file: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "m.kbundle"
    bundle.write_bytes(b"precious")
    result = run_cli("pack", saved_keras_file, "-o", bundle)
    assert_clean_failure(result, 2)
    assert (
        result.stderr
        == f"kbundle: error: bundle {bundle} already exists; pass --force (force=True) to replace it\n"
    )
    assert bundle.read_bytes() == b"precious"
    # --force replaces a bundle, not whatever file has the name (THREATS.md row 27)...
    refused = run_cli("pack", saved_keras_file, "-o", bundle, "--force")
    assert_clean_failure(refused, 2)
    assert refused.stderr == (
        f"kbundle: error: will not replace bundle {bundle}: it is not a kbundle bundle (it "
        "starts with 70726563); --force replaces only a bundle; choose another -o, or move it "
        "away yourself\n"
    )
    assert bundle.read_bytes() == b"precious"
    # ... which it does replace, damaged or not.
    bundle.write_bytes(ZSTD_MAGIC + b"a damaged bundle")
    forced = run_cli("pack", saved_keras_file, "-o", bundle, "--force")
    assert forced.returncode == 0, forced.stderr
    assert run_cli("verify", bundle).returncode == 0


def test_unpack_refuses_existing_destination(saved_keras_file: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "m.kbundle"
    assert run_cli("pack", saved_keras_file, "-o", bundle).returncode == 0
    destination = tmp_path / "out"
    destination.mkdir()
    (destination / "keep.txt").write_text("mine")
    result = run_cli("unpack", bundle, "-d", destination, "--no-load")
    assert_clean_failure(result, 2)
    assert (
        result.stderr
        == f"kbundle: error: destination {destination} already exists; pass --force (force=True) to replace it\n"
    )
    assert (destination / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["pack", "missing.keras", "-o", "x.kbundle"],
            "kbundle: error: missing.keras does not exist; check the model path",
        ),
        (
            ["pack", "notes.txt", "-o", "x.kbundle"],
            "kbundle: error: notes.txt is text, not a model (it starts: 'hello world'); this is not a model file: find the model file it stands for (a download that saved an error page, or a note about the model)",
        ),
        (
            ["pack", "notes.txt", "-o", "nodir/x.kbundle"],
            "kbundle: error: the directory nodir does not exist; create it first",
        ),
        (
            ["verify", "x.kbundle", "--expect", "abc"],
            "kbundle: error: expect (--expect) must be 'sha256:' followed by 64 lowercase hex digits: 'abc'; copy the digest that 'kbundle pack' printed",
        ),
    ],
)
def test_bad_input_gives_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    (tmp_path / "notes.txt").write_text("hello world")
    result = run_cli(*args, cwd=tmp_path)
    assert_clean_failure(result, 2)
    assert result.stderr == message + "\n"
    assert not (tmp_path / "x.kbundle").exists()


def test_bad_level_is_a_usage_error(saved_keras_file: Path, tmp_path: Path) -> None:
    result = run_cli("pack", saved_keras_file, "-o", tmp_path / "x.kbundle", "--level", "99")
    assert_clean_failure(result, 2)
    assert "compression level must be 1..22 (or -7..-1 for faster), or 'none': 99" in result.stderr


def test_every_command_help_ends_with_examples() -> None:
    from kbundle.cli import main

    top = run_cli("--help")
    assert top.returncode == 0 and "Examples:" in top.stdout
    commands = sorted(main.commands)
    assert {"pack", "verify", "inspect", "unpack"} <= set(commands)
    for command in commands:
        result = run_cli(command, "--help")
        assert result.returncode == 0
        assert "Examples:" in result.stdout, command
        assert f"kbundle {command}" in result.stdout.split("Examples:")[1], command


def _big_model(tmp_path: Path, keras: Any) -> Path:
    """A real .keras file of ~64 MB, so that packing it takes long enough to be killed."""
    model = keras.Sequential([keras.Input((4000,)), keras.layers.Dense(4000, use_bias=False)])
    path = tmp_path / "big.keras"
    model.save(path)
    return path


@pytest.mark.slow
def test_pack_killed_mid_write_leaves_nothing(keras: Any, tmp_path: Path) -> None:
    model = _big_model(tmp_path, keras)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    scratch = tmp_path / "child-tmp"  # SIGKILL leaves pack's scratch directory: keep it here
    scratch.mkdir()
    for delay in (0.3, 0.6, 1.0):
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kbundle",
                "pack",
                str(model),
                "-o",
                str(out_dir / "m.kbundle"),
                "--level",
                "19",
                "--threads",
                "0",
                "--quiet",
            ],
            env=child_env(TMPDIR=str(scratch)),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait()
        assert process.returncode == -signal.SIGKILL, (
            "pack finished before it was killed; make the model bigger"
        )
        assert list(out_dir.iterdir()) == [], f"left behind after SIGKILL at {delay}s"


def test_pack_onto_a_full_file_system_leaves_nothing(
    saved_keras_file: Path, tmp_path: Path
) -> None:
    """RLIMIT_FSIZE makes writes past 4 KiB fail as they would on a full disk."""

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "kbundle",
            "pack",
            str(saved_keras_file),
            "-o",
            str(out / "m.kbundle"),
            "--level",
            "none",
            "--no-probe",  # the probe's unzipped copy would meet the limit first
        ],
        capture_output=True,
        text=True,
        env=child_env(),
        preexec_fn=limit,
        timeout=120,
    )
    assert_clean_failure(result, 2)
    assert (
        result.stderr
        == f"kbundle: error: file size limit reached while writing {out / 'm.kbundle'}; free space or write the output elsewhere; nothing was left behind\n"
    )
    assert list(out.iterdir()) == []


def test_json_outputs_are_machine_readable(saved_keras_file: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "m.kbundle"
    packed = json.loads(run_cli("pack", saved_keras_file, "-o", bundle, "--json").stdout)
    verified = json.loads(run_cli("verify", bundle, "--json").stdout)
    inspected = json.loads(run_cli("inspect", bundle, "--json").stdout)
    assert packed["digest"] == verified["digest"] == inspected["digest"]
    members = inspected["manifest"]["members"]
    assert verified == {
        "ok": True,
        "digest": packed["digest"],
        "files": len(members),
        "bytes": sum(m["size"] for m in members),
        "signed": False,
        "findings": [],
        "signature": {"signers": [], "state": "unsigned", "trusted_signers": []},
    }
    assert inspected["manifest"]["model"]["format"] == "keras"


def test_native_tensorflow_chatter_is_filtered_but_real_errors_are_not() -> None:
    from kbundle.models.native_logs import is_noise

    noise = [
        "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
        "I0000 00:00:1795240808.517151   10327 port.cc:153] oneDNN custom operations are on.",
        "E0000 00:00:1795239294.297846    2574 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error",
    ]
    kept = [
        "kbundle: error: the verified model failed to load",
        "E0000 00:00:1.0 op_kernel.cc:1] OOM when allocating tensor",
        "Traceback (most recent call last):",
    ]
    assert [is_noise(line) for line in noise] == [True, True, True]
    assert [is_noise(line) for line in kept] == [False, False, False]


def test_unpack_output_has_no_tensorflow_startup_chatter(
    saved_keras_file: Path, tmp_path: Path
) -> None:
    bundle = tmp_path / "m.kbundle"
    assert run_cli("pack", saved_keras_file, "-o", bundle).returncode == 0
    result = run_cli("unpack", bundle, "-d", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"verified 4 files into {tmp_path / 'out'} (integrity-checked, not signed)",
        "model loads: Sequential 'tiny_sequential', 193 parameters",
        "probe: outputs match the recorded ones (max abs diff 0, max rel diff 0; within rtol 0.0001, atol 1e-05)",
    ]


def _stderr_on_a_terminal(args: list[str]) -> tuple[int, str]:
    """Run the CLI with stderr on a pseudo-terminal (stdout piped); return code and stderr."""
    import pty

    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [sys.executable, "-m", "kbundle", *args],
        stdout=subprocess.DEVNULL,
        stderr=follower,
        stdin=subprocess.DEVNULL,
        env=child_env(COLUMNS="100"),
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    return process.wait(timeout=120), b"".join(chunks).decode("utf-8", "replace")


def test_progress_is_drawn_on_a_terminal_and_quiet_otherwise(keras: Any, tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((1500,)), keras.layers.Dense(1500, use_bias=False)])
    model.save(tmp_path / "m.keras")
    bundle = tmp_path / "m.kbundle"
    code, terminal = _stderr_on_a_terminal(
        ["pack", str(tmp_path / "m.keras"), "-o", str(bundle), "--level", "19"]
    )
    assert code == 0, terminal
    assert "packing" in terminal and "MB" in terminal
    code, terminal = _stderr_on_a_terminal(["verify", str(bundle)])
    assert code == 0 and "verifying" in terminal
    code, terminal = _stderr_on_a_terminal(["verify", str(bundle), "--quiet"])
    assert code == 0 and terminal == ""
    piped = run_cli("verify", bundle)
    assert "verifying" not in piped.stderr and "\x1b[" not in piped.stderr


def test_pack_of_a_bundle_says_it_is_one(saved_keras_file: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "m.kbundle"
    assert run_cli("pack", saved_keras_file, "-o", bundle, "--no-probe").returncode == 0
    again = run_cli("pack", bundle, "-o", tmp_path / "again.kbundle")
    assert_clean_failure(again, 2)
    assert again.stderr == (
        f"kbundle: error: {bundle} is a zstd file (a kbundle bundle?), not a Keras model; "
        "pack the model file itself; 'kbundle inspect' shows what a bundle holds\n"
    )
    shown = run_cli("show-code", bundle)
    assert shown.returncode == 0 and shown.stdout == ""
    assert (
        shown.stderr
        == f"{bundle} carries no custom-object code: nothing would run when it is loaded\n"
    )


def test_every_command_has_json_and_every_talkative_one_has_quiet() -> None:
    # The README promises both; a new command that forgets either fails here.
    import click

    from kbundle.cli import main

    def commands(group: click.Group, prefix: str = "") -> dict[str, click.Command]:
        found: dict[str, click.Command] = {}
        for name, command in group.commands.items():
            if isinstance(command, click.Group):
                found.update(commands(command, f"{prefix}{name} "))
            else:
                found[prefix + name] = command
        return found

    every = commands(main)
    flags = {name: {o for p in c.params for o in p.opts} for name, c in every.items()}
    assert [name for name, opts in flags.items() if "--json" not in opts] == []
    talkative = ["pack", "verify", "unpack", "sign", "keygen", "env export", "env create"]
    assert [name for name in talkative if "-q" not in flags[name]] == []


def test_quiet_is_quiet_on_every_path_that_imports_tensorflow(
    user_project: Path, tmp_path: Path
) -> None:
    # TensorFlow's native start-up lines are written by C++ before Python logging exists;
    # TF_CPP_MIN_LOG_LEVEL=0 lets all of them out, and --quiet must still print the digest only.
    loud = child_env(TF_CPP_MIN_LOG_LEVEL="0")
    bundle = tmp_path / "m.kbundle"
    note = (
        "kbundle: note: imported mypkg.mylayers from your project to find the model's custom "
        "objects (--no-project-imports turns this off)\n"
    )
    for extra, expected in (
        (["--custom-objects", "mypkg.mylayers", "--no-project-imports"], ""),
        ([], note),
    ):
        packed = run_cli(
            "pack", "model.keras", "-o", bundle, "--force", "--quiet", *extra,
            cwd=user_project, env=loud,
        )  # fmt: skip
        assert packed.returncode == 0, packed.stderr
        assert (packed.stdout, packed.stderr) == (
            f"sha256:{packed.stdout[7:71]}  {bundle}\n",
            expected,
        )
    unpacked = run_cli(
        "unpack", bundle, "-d", tmp_path / "out", "--trust-code", "--quiet", env=loud
    )
    assert (unpacked.returncode, unpacked.stderr) == (0, "")


def test_every_phase_that_takes_a_while_is_named(saved_keras_file: Path, tmp_path: Path) -> None:
    import kbundle

    packing: list[str] = []
    bundle = kbundle.pack(saved_keras_file, tmp_path / "m.kbundle", phase=packing.append).path
    assert packing == [
        "checking the model file",
        "finding the model's custom objects",
        "running the probe (loads the model with Keras when packing a file)",
        "recording the environment",
    ]
    loading: list[str] = []
    kbundle.unpack(bundle, tmp_path / "out", load_model=True, phase=loading.append)
    assert loading == [
        "checking the environment",
        "loading the model with Keras",
        "running the probe",
    ]

    # On a terminal each phase replaces the bar's label while it runs.
    code, terminal = _stderr_on_a_terminal(
        ["pack", str(saved_keras_file), "-o", str(tmp_path / "t.kbundle")]
    )
    assert code == 0, terminal
    assert "running the probe (loads the model with Keras when packing a file)" in terminal
    code, terminal = _stderr_on_a_terminal(
        ["unpack", str(tmp_path / "t.kbundle"), "-d", str(tmp_path / "t")]
    )
    assert code == 0, terminal
    assert "loading the model with Keras" in terminal
