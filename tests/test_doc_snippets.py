"""Every shell and Python snippet in README.md and docs/ runs, or says why it cannot.

A fenced block must name its language. ``sh``, ``console`` and ``python`` blocks are run in a
fresh workspace; an HTML comment on the line before the fence chooses it
(``<!-- snippet: setup custom bundle -->``) or says why the block is not run
(``<!-- snippet: not run: REASON -->``). Other languages (``text`` for shown output, ``json``,
``toml``) are not code.

Running a block: each command of an ``sh`` block must exit 0. In a ``console`` block the
lines after ``$ COMMAND`` are what it shows: a ``kbundle: error:`` line means it must fail,
``$ echo $?`` checks the exit code shown, and every ``kbundle:`` message shown must be what
kbundle prints (``...`` stands for any text). A digest written as ``sha256:3f2a...`` or
``$PINNED_DIGEST`` is the digest of the workspace's ``model.kbundle``. The workspace's
``HOME`` is its own, so ``~/.config/kbundle`` is too; docs/cli.md is generated from
``--help`` and checked by test_docs.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, child_env, run_python

import kbundle

pytestmark = [pytest.mark.slow, pytest.mark.keras]

DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
GENERATED = {REPO / "docs" / "cli.md"}  # from --help (test_docs.py)
CODE = {"sh", "console", "python"}
NOT_CODE = {"text", "json", "toml"}
FENCE = re.compile(r"^```(\S*)\s*$")
MARKER = re.compile(r"^<!-- snippet: (.*) -->$")
PLACEHOLDER = re.compile(r"sha256:[0-9a-f]*\.\.\.|\$PINNED_DIGEST")
# What a workspace holds besides model.keras and model.h5 (a tiny Sequential; "custom",
# "acme" and "distribution" put a custom layer in it): "bundle" model.kbundle, "keys"
# release.key/.pub, "signed" model.kbundle signed with release.key, "trusted" release.pub in
# the trusted-keys directory, "other" other.kbundle, "savedmodel" exported_savedmodel/ and
# big_model.keras, "examples" a copy of examples/, "assets" tokenizer.json and vocab/,
# "old-new" old.kbundle and new.kbundle (two models). Without a setup marker: "bundle".
SETUPS = {"model", "bundle", "keys", "signed", "other", "trusted", "custom", "acme",
          "distribution", "savedmodel", "examples", "assets", "old-new"}  # fmt: skip
PROJECT = REPO / "tests" / "custom_objects_project"


@dataclass(frozen=True)
class Snippet:
    path: Path
    line: int
    language: str
    text: str
    marker: str | None

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(REPO)}:{self.line}"

    @property
    def reason_not_run(self) -> str | None:
        if self.marker and self.marker.startswith("not run:"):
            return self.marker.removeprefix("not run:").strip()
        return None

    @property
    def setup(self) -> frozenset[str]:
        if self.marker and self.marker.startswith("setup"):
            return frozenset(self.marker.split()[1:])
        return frozenset({"bundle"})


def _snippets() -> list[Snippet]:
    found = []
    for path in DOCUMENTS:
        if path in GENERATED:
            continue
        lines = path.read_text(encoding="utf-8").splitlines()
        index = 0
        while index < len(lines):
            opened = FENCE.match(lines[index])
            if not opened:
                index += 1
                continue
            end = lines.index("```", index + 1)
            marker = MARKER.match(lines[index - 1]) if index else None
            found.append(
                Snippet(
                    path,
                    index + 1,
                    opened.group(1),
                    "\n".join(lines[index + 1 : end]),
                    marker.group(1) if marker else None,
                )
            )
            index = end + 1
    return found


SNIPPETS = _snippets()
RUNNABLE = [s for s in SNIPPETS if s.language in CODE and s.reason_not_run is None]


def test_every_block_names_its_language_and_every_command_block_runs_or_says_why() -> None:
    assert len(SNIPPETS) > 30
    unnamed = [s.name for s in SNIPPETS if s.language not in CODE | NOT_CODE]
    assert unnamed == [], "label each fence: sh, console, python, text, json or toml"
    bad_markers = [
        s.name
        for s in SNIPPETS
        if s.marker is not None
        and not (s.reason_not_run or (s.marker.startswith("setup ") and s.setup <= SETUPS))
    ]
    assert bad_markers == []
    assert len(RUNNABLE) >= 20


# --------------------------------------------------------------------------------------------
# Workspaces


_BUILD = """
import shutil, subprocess, sys
import keras
flags = set(sys.argv[1:])
layers = []
if "custom" in flags:
    from mypkg.layers import MyCustomLayer
    layers = [MyCustomLayer()]
elif "acme" in flags:
    from mypkg.acme import Scale, soft_sign
    layers = [Scale(), keras.layers.Dense(3, activation=soft_sign)]
elif "distribution" in flags:
    sys.path.insert(0, "site")
    from acme_layers.layers import Clip
    layers = [Clip()]
model = keras.Sequential([keras.Input((4,)), *layers, keras.layers.Dense(2)], name="tiny")
model.save("model.keras")
model.save("model.h5")
if "savedmodel" in flags:
    model.export("exported_savedmodel", verbose=False)
    shutil.copy("model.keras", "big_model.keras")
kbundle = [sys.executable, "-m", "kbundle"]
def run(*args):
    done = subprocess.run([*kbundle, *args], capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"kbundle {' '.join(args)}: {done.stderr}")
if flags & {"keys", "signed", "trusted"}:
    run("keygen", "-o", "release", "--no-passphrase", "-q")
if "bundle" in flags or "signed" in flags:
    run("pack", "model.keras", "-o", "model.kbundle", "-q",
        *(["--sign", "release.key"] if "signed" in flags else []),
        # an installed distribution is never imported for a model file unless named
        *(["--custom-objects", "acme_layers.layers"] if "distribution" in flags else []))
if "other" in flags:
    run("pack", "model.keras", "-o", "other.kbundle", "-q", "--no-probe")
if "old-new" in flags:
    run("pack", "model.keras", "-o", "old.kbundle", "-q", "--no-probe")
    keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)], name="tiny").save("new.keras")
    run("pack", "new.keras", "-o", "new.kbundle", "-q", "--no-probe")
"""

_CUSTOM_LAYER = """\
import keras


@keras.saving.register_keras_serializable(package="mypkg")
class MyCustomLayer(keras.layers.Layer):
    def call(self, inputs):
        return inputs * 2.0
"""


def _environment(workspace: Path, setup: frozenset[str]) -> dict[str, str]:
    paths = [str(REPO)] + ([str(workspace / "site")] if "distribution" in setup else [])
    env = child_env(
        HOME=str(workspace / "home"),
        TMPDIR=str(workspace / "tmp"),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        PYTHONPATH=os.pathsep.join(paths),
    )
    for variable in ("XDG_CONFIG_HOME", "KBUNDLE_TRUSTED_KEYS", "KBUNDLE_KEY_PASSPHRASE"):
        env.pop(variable, None)
    return env


_TEMPLATES: dict[frozenset[str], Path] = {}


def _template(setup: frozenset[str], root: Path) -> Path:
    """A workspace for ``setup``, built once per session and copied for each snippet."""
    if setup in _TEMPLATES:
        return _TEMPLATES[setup]
    workspace = root / ("-".join(sorted(setup)) or "model")
    (workspace / "home").mkdir(parents=True)
    (workspace / "tmp").mkdir()
    if "examples" in setup:
        shutil.copytree(REPO / "examples", workspace / "examples")
    if "custom" in setup:
        (workspace / "mypkg").mkdir()
        (workspace / "mypkg" / "__init__.py").write_text("")
        (workspace / "mypkg" / "layers.py").write_text(_CUSTOM_LAYER)
    if "acme" in setup:
        (workspace / "mypkg").mkdir()
        shutil.copy(PROJECT / "mypkg" / "__init__.py", workspace / "mypkg")
        shutil.copy(PROJECT / "mypkg" / "acme.py", workspace / "mypkg")
    if "distribution" in setup:
        shutil.copytree(PROJECT / "site", workspace / "site")
    if "assets" in setup:
        (workspace / "tokenizer.json").write_text('{"model": {"type": "WordLevel"}}\n')
        (workspace / "vocab").mkdir()
        (workspace / "vocab" / "words.txt").write_text("the\nof\nand\n")
    built = run_python(
        "-c", _BUILD, *sorted(setup), cwd=workspace, env=_environment(workspace, setup)
    )
    assert built.returncode == 0, built.stderr[-3000:]
    if "trusted" in setup:
        trusted = workspace / "home" / ".config" / "kbundle" / "trusted-keys"
        trusted.mkdir(parents=True)
        shutil.copy(workspace / "release.pub", trusted)
    _TEMPLATES[setup] = workspace
    return workspace


@pytest.fixture(scope="session")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("doc-workspaces")


# --------------------------------------------------------------------------------------------
# Running a block


@dataclass
class Command:
    line: str
    shown: list[str]  # what a console block shows after it


def _commands(snippet: Snippet) -> list[Command]:
    commands: list[Command] = []
    pending = ""
    for raw in snippet.text.splitlines():
        if snippet.language == "console":
            if raw.startswith("$ "):
                commands.append(Command(raw[2:], []))
            elif commands:
                commands[-1].shown.append(raw)
            continue
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        commands.append(Command(pending + line, []))
        pending = ""
    return commands


def _digest(workspace: Path) -> str:
    bundle = workspace / "model.kbundle"
    return kbundle.inspect(bundle).digest if bundle.exists() else "sha256:" + "0" * 64


def _messages(shown: list[str]) -> list[str]:
    """Each ``kbundle:`` message shown, its wrapped lines joined."""
    messages: list[str] = []
    for line in shown:
        if line.startswith("kbundle: "):
            messages.append(line)
        elif messages and line and not line.startswith(("$", " ")):
            messages[-1] += " " + line
    return messages


def _pattern(message: str) -> re.Pattern[str]:
    """A shown message as a pattern: any line breaks, ``...`` any text (an abbreviated
    digest such as ``sha256:9c72...`` any digest)."""
    message = re.sub(r"sha256:[0-9a-f]*\.\.\.", "sha256:...", message.strip())
    parts = [re.escape(part) for part in re.split(r"\s+", message)]
    return re.compile(r"\s+".join(parts).replace(re.escape("..."), ".*?"))


def _tools_for(command: str) -> None:
    for tool in ("jq", "tar"):
        if re.search(rf"(^|\| ){tool} ", command) and shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed here")
    if "--zstd" in command and shutil.which("zstd") is None:
        pytest.skip("tar --zstd needs the zstd program, which is not installed here")


def _run_shell(snippet: Snippet, workspace: Path, env: dict[str, str]) -> None:
    last = 0
    for command in _commands(snippet):
        line = PLACEHOLDER.sub(lambda _: _digest(workspace), command.line)
        if line.strip() == "echo $?":
            assert command.shown == [str(last)], (snippet.name, last)
            continue
        _tools_for(line)
        done = subprocess.run(
            ["bash", "-c", line],
            cwd=workspace,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            stdin=subprocess.DEVNULL,
        )
        last = done.returncode
        output = done.stdout + done.stderr
        messages = _messages(command.shown)
        if any(m.startswith("kbundle: error:") for m in messages):
            assert last != 0, f"{snippet.name}: {line!r} should fail"
        else:
            assert last == 0, f"{snippet.name}: {line!r} exited {last}: {output[-2000:]}"
        for message in messages:
            assert _pattern(message).search(output), (
                f"{snippet.name}: {line!r} does not print {message!r}; it printed:\n{output}"
            )


def _run_python(snippet: Snippet, workspace: Path, env: dict[str, str]) -> None:
    prelude = "import kbundle\n"
    if "pack(model" in snippet.text:
        prelude += "import keras\nmodel = keras.saving.load_model('model.keras')\n"
    script = workspace / "snippet.py"
    script.write_text(prelude + snippet.text + "\n")
    done = run_python(script, cwd=workspace, env=env)
    assert done.returncode == 0, f"{snippet.name}:\n{done.stderr[-3000:]}"


@pytest.mark.parametrize("snippet", RUNNABLE, ids=[s.name for s in RUNNABLE])
def test_snippet_runs(snippet: Snippet, templates: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    shutil.copytree(_template(snippet.setup, templates), workspace, symlinks=True)
    env = _environment(workspace, snippet.setup)
    if snippet.language == "python":
        _run_python(snippet, workspace, env)
    else:
        _run_shell(snippet, workspace, env)


def test_the_runner_catches_a_stale_message(templates: Path, tmp_path: Path) -> None:
    # A console block whose message kbundle no longer prints must fail, as must a command
    # that fails where the block shows success.
    workspace = tmp_path / "workspace"
    shutil.copytree(_template(frozenset({"bundle"}), templates), workspace, symlinks=True)
    env = _environment(workspace, frozenset({"bundle"}))
    stale = Snippet(REPO / "README.md", 0, "console", "$ kbundle verify absent.kbundle\n"
                    "kbundle: error: a message kbundle never printed", None)  # fmt: skip
    with pytest.raises(AssertionError, match="does not print"):
        _run_shell(stale, workspace, env)
    failing = Snippet(REPO / "README.md", 0, "sh", "kbundle verify absent.kbundle", None)
    with pytest.raises(AssertionError, match="exited 2"):
        _run_shell(failing, workspace, env)
