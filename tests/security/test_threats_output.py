"""THREATS.md rows 25-27: what kbundle prints cannot be forged by a bundle, review never
crashes on the code it shows, and ``--force`` never loses a user's data.

Row 25: bundles forged with valid digests carry terminal control sequences (ESC/CSI, CR,
newlines, C1 controls, bidi overrides and isolates) in every string a command prints; the real
CLI must show each one escaped (``\\x1b``, ``\\u202e``) and never let a value start a line of
its own. Row 26: ``show-code`` on source Python cannot decode. Row 27: ``unpack --force`` and
``pack --force`` replace only a previous kbundle output, never the input or a user's files.
No Keras except where a real model file is packed.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest
from bundle_factory import Entry, digest, forge, manifest_for
from conftest import assert_clean_failure, run_cli
from hostile import MODEL_PATH, base_manifest, model_bundle, tree

from kbundle.container.manifest import FORMAT_VERSION

# A model name that, printed raw, moves the cursor up, erases the "signed" line kbundle just
# printed and writes a forged one; then a CR, a bidi override and a C1 CSI (U+009B) clearing
# the screen.
FORGED_NAME = "net\x1b[1A\x1b[2K\nsigned      by ed25519:forged (trusted)\r\u202eX\x9b2J"
FORGED_NAME_SHOWN = (
    "net\\x1b[1A\\x1b[2K\\nsigned      by ed25519:forged (trusted)\\r\\u202eX\\x9b2J"
)
# Source under review: the ESC sequences would erase the line holding os.system and move up;
# the lone CR ends the line for Python too (it runs print as a statement of its own); the bidi
# isolates reorder a string so that it reads as a comment (Trojan Source, CVE-2021-42574).
HOSTILE_SOURCE = (
    b"import os\n"
    b"os.system('id')  #\x1b[2K\x1b[1A\rprint('harmless')\n"
    b"access = 'user\xe2\x80\xae \xe2\x81\xa6// admin\xe2\x81\xa9'\n"
    b"def f():\n\treturn 1\n"
)
OBJECT_NAME = "Evil\x1b[2K\nline"


def _terminal_safe(text: str) -> None:
    """Nothing a terminal acts on: every character printable, or a newline between lines."""
    unsafe = sorted({char for char in text if not char.isprintable() and char != "\n"})
    assert unsafe == [], unsafe


def _hostile_bundle(path: Path) -> Path:
    """A bundle whose every checksum is valid and whose printed strings are hostile."""
    entries = [Entry(MODEL_PATH, b"not a model"), Entry("code/evil.py", HOSTILE_SOURCE)]
    manifest = manifest_for(entries, base_manifest())
    manifest["model"]["name"] = FORGED_NAME
    manifest["model"]["class_name"] = "Seq\x1b]0;title\x07"
    manifest["generator"] = "kbundle\x1b[31m"
    manifest["environment"]["platform"]["machine"] = "x86_64\x1b[2K\nforged"
    manifest["environment"]["keras"]["backend"] = "jax\u2066\x1b[2K"
    manifest["custom_objects"] = [
        {
            "name": OBJECT_NAME,
            "kind": "function",
            "module": "evil",
            "qualname": "f",
            "transport": "source",
            "source_digest": digest(HOSTILE_SOURCE),
            "sources": [{"module": "evil", "path": "code/evil.py"}],
        }
    ]
    return forge(path, manifest, entries)


# --------------------------------------------------------------------------------------------
# Row 25: terminal control sequences


@pytest.mark.parametrize(
    ("char", "shown"),
    [
        ("\x1b", "\\x1b"),  # ESC: every cursor movement and erase starts with it
        ("\r", "\\r"),
        ("\x00", "\\x00"),
        ("\x7f", "\\x7f"),
        ("\x9b", "\\x9b"),  # C1 CSI: ESC [ in one character
        ("\x85", "\\x85"),  # C1 NEL: a newline to some terminals
        *((chr(code), f"\\u{code:04x}") for code in range(0x202A, 0x202F)),  # bidi embed/override
        *((chr(code), f"\\u{code:04x}") for code in range(0x2066, 0x206A)),  # bidi isolates
        ("\u200b", "\\u200b"),  # zero-width space
        ("\u2028", "\\u2028"),  # line separator
        ("\u00a0", "\\xa0"),  # a space that is not one
        ("\udcff", "\\udcff"),  # a lone surrogate: an undecodable byte of a file name
        ("\ue000", "\\ue000"),  # private use
        ("\U000e0001", "\\U000e0001"),  # tag character, invisible
        ("\U0010ffff", "\\U0010ffff"),  # not a character
    ],
)
def test_row25_every_non_printable_character_is_escaped(char: str, shown: str) -> None:
    from kbundle.cli.render import printable

    for keep_newlines in (False, True):
        text = printable(f"a{char}b", keep_newlines=keep_newlines, keep_tabs=True)
        assert text == f"a{shown}b"


def test_row25_printable_keeps_text_and_only_the_line_breaks_asked_for() -> None:
    from kbundle.cli.render import printable

    text = "Dense 'é' 中文 \\x1b already escaped"
    assert printable(text, keep_newlines=False) == text
    assert printable("a\nb\tc", keep_newlines=False) == "a\\nb\\tc"
    assert printable("a\nb\tc", keep_newlines=True) == "a\nb\\tc"
    assert printable("a\nb\tc", keep_newlines=True, keep_tabs=True) == "a\nb\tc"


def test_row25_inspect_cannot_forge_a_signed_line(tmp_path: Path) -> None:
    bundle = _hostile_bundle(tmp_path / "h.kbundle")
    result = run_cli("inspect", bundle)
    assert result.returncode == 0, result.stderr
    _terminal_safe(result.stdout)
    lines = result.stdout.splitlines()
    assert [line for line in lines if line.startswith("signed")] == [
        "signed      no (integrity-checked, not signed)"
    ]
    assert f"model       Seq\\x1b]0;title\\x07 {FORGED_NAME_SHOWN} (keras, {MODEL_PATH})" in lines
    assert any(
        line.startswith(f"format      kbundle {FORMAT_VERSION}, written by kbundle\\x1b[31m at ")
        for line in lines
    )
    assert any(line.startswith("platform    Linux x86_64\\x1b[2K\\nforged") for line in lines)
    assert any(line.startswith("  Evil\\x1b[2K\\nline ") for line in lines)


def test_row25_json_output_holds_no_control_character(tmp_path: Path) -> None:
    """ASCII only: a consumer printing the JSON raw meets no C1 control or bidi override
    either, and every parser restores the exact strings."""
    bundle = _hostile_bundle(tmp_path / "h.kbundle")
    result = run_cli("inspect", bundle, "--json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.isascii()
    _terminal_safe(result.stdout)
    model = json.loads(result.stdout)["manifest"]["model"]
    assert model["name"] == FORGED_NAME

    shown = run_cli("show-code", bundle, "--json")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.isascii()
    listing = json.loads(shown.stdout)["objects"][0]
    assert listing["name"] == OBJECT_NAME
    assert "os.system('id')  #\x1b[2K\x1b[1A\nprint('harmless')" in listing["files"][0]["text"]


def test_row25_show_code_shows_the_hidden_call_and_every_escape(tmp_path: Path) -> None:
    bundle = _hostile_bundle(tmp_path / "h.kbundle")
    result = run_cli("show-code", bundle)
    assert result.returncode == 0, result.stderr
    _terminal_safe(result.stdout.replace("\t", " "))
    assert result.stdout.splitlines() == [
        "# ==== Evil\\x1b[2K\\nline (function): evil.f",
        "# bundled source, imported as evil",
        f"# definition {digest(HOSTILE_SOURCE)}",
        f"# ---- code/evil.py (module evil) {digest(HOSTILE_SOURCE)}",
        "import os",
        "os.system('id')  #\\x1b[2K\\x1b[1A",
        "print('harmless')",
        "access = 'user\\u202e \\u2066// admin\\u2069'",
        "def f():",
        "\treturn 1",  # a tab is kept: it moves the cursor over blanks only
        "",
    ]


def test_row25_an_error_quoting_bundle_content_is_one_escaped_line(tmp_path: Path) -> None:
    bundle = _hostile_bundle(tmp_path / "h.kbundle")
    result = run_cli("unpack", bundle, "-d", tmp_path / "out")
    assert_clean_failure(result, 4)
    assert result.stderr == (
        "kbundle: error: loading would run bundled code nobody trusted: "
        "Evil\\x1b[2K\\nline (source); review it with 'kbundle show-code', then pass "
        "--trust-code (trust_code=True), or trust the signer's public key (--key, or the "
        "trusted keys directory)\n"
    )
    assert not (tmp_path / "out").exists()


def test_row25_check_doctor_and_unpack_escape_recorded_values(tmp_path: Path) -> None:
    bundle = _hostile_bundle(tmp_path / "h.kbundle")

    checked = run_cli("check", bundle)
    assert checked.returncode == 0, checked.stderr
    _terminal_safe(checked.stdout + checked.stderr)
    rows = [line.split() for line in checked.stdout.splitlines()]
    assert ["platform.machine", "x86_64\\x1b[2K\\nforged", platform.machine(), "info"] in rows
    assert ["keras.backend", "jax\\u2066\\x1b[2K", "tensorflow", "warn"] in rows
    assert "  fix: set KERAS_BACKEND=jax\\u2066\\x1b[2K" in checked.stdout.splitlines()

    diagnosed = run_cli("doctor", bundle)
    assert diagnosed.returncode == 1, diagnosed.stderr  # the model bytes are not a model
    _terminal_safe(diagnosed.stdout + diagnosed.stderr)
    assert (
        "  - [info] environment.platform.machine: another CPU architecture from the packing "
        f"environment (expected x86_64\\x1b[2K\\nforged, found {platform.machine()})"
    ) in diagnosed.stdout.splitlines()

    # --no-load runs nothing and names the differences by rule, not by recorded value.
    unpacked = run_cli(
        "unpack", bundle, "-d", tmp_path / "out", "--no-load", "--severity", "keras.backend=warn"
    )
    assert unpacked.returncode == 0, unpacked.stderr
    _terminal_safe(unpacked.stdout + unpacked.stderr)
    assert unpacked.stderr.splitlines()[0].startswith(
        "kbundle: note: not loaded (--no-load); this environment differs from the recorded one: "
    )
    assert "1 warning (keras.backend)" in unpacked.stderr.splitlines()[0]


# --------------------------------------------------------------------------------------------
# Row 26: show-code on source Python cannot decode


@pytest.mark.parametrize(
    ("source", "reason", "shown"),
    [
        (
            b"# -*- coding: nonexistent -*-\nos.system('id')\n",
            "unknown encoding: nonexistent",
            ["# -*- coding: nonexistent -*-", "os.system('id')"],
        ),
        (
            b"x = '\xff'\nos.system('id')\n",
            "invalid or missing encoding declaration",
            ["x = '\\xff'", "os.system('id')"],
        ),
        (
            b"import os\n\nos.system('id')  # \xc3\x28\n",
            "'utf-8' codec can't decode byte 0xc3 in position 30: invalid continuation byte",
            ["import os", "", "os.system('id')  # \\xc3("],
        ),
        (
            b"# coding: rot13\nbf.flfgrz('vq')\n",
            "'rot13' is not a text encoding; use codecs.decode() to handle arbitrary codecs",
            ["# coding: rot13", "bf.flfgrz('vq')"],
        ),
    ],
    ids=["unknown-cookie", "invalid-utf8-first-lines", "invalid-utf8-later", "not-a-text-codec"],
)
def test_row26_show_code_shows_source_python_cannot_decode(
    tmp_path: Path, source: bytes, reason: str, shown: list[str]
) -> None:
    record = {
        "name": "f",
        "kind": "function",
        "module": "odd",
        "qualname": "f",
        "transport": "source",
        "sources": [{"module": "odd", "path": "code/odd.py"}],
    }
    bundle = model_bundle(
        tmp_path / "odd.kbundle",
        {MODEL_PATH: b"not a model", "code/odd.py": source},
        custom_objects=[record],
    )
    result = run_cli("show-code", bundle)
    assert result.returncode == 0, result.stderr
    _terminal_safe(result.stdout)
    assert result.stdout.splitlines()[3:] == [
        f"# kbundle: this file is not valid Python source ({reason}); shown as UTF-8 with "
        "undecodable bytes escaped",
        *shown,
        "",
    ]


# --------------------------------------------------------------------------------------------
# Row 27: --force replaces only a previous kbundle output, never the input


def _bundle(path: Path, content: bytes = b"model bytes") -> Path:
    return model_bundle(path, {MODEL_PATH: content, "model/assets/vocab.txt": b"a\nb\n"})


_REFUSED_HINT = (
    "--force replaces only a directory a previous 'kbundle unpack' made, unchanged; "
    "choose another --dest, or move it away yourself"
)


def test_row27_unpack_force_never_replaces_the_directory_holding_its_input(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "x"
    directory.mkdir()
    bundle = _bundle(directory / "m.kbundle")
    (directory / "notes.txt").write_text("mine")
    before = tree(tmp_path)

    result = run_cli("unpack", "x/m.kbundle", "-d", "x", "--force", "--no-load", cwd=tmp_path)
    assert_clean_failure(result, 2)
    assert result.stderr == (
        "kbundle: error: will not replace destination x: it holds the input x/m.kbundle; "
        "choose another --dest; an input is never replaced\n"
    )
    assert tree(tmp_path) == before

    itself = run_cli("unpack", bundle, "-d", bundle, "--force", "--no-load")
    assert_clean_failure(itself, 2)
    assert itself.stderr == (
        f"kbundle: error: will not replace destination {bundle}: it is the input {bundle}; "
        "choose another --dest; an input is never replaced\n"
    )
    assert tree(tmp_path) == before


def test_row27_unpack_force_refuses_the_current_directory_and_its_ancestors(
    tmp_path: Path,
) -> None:
    (tmp_path / "bundles").mkdir()
    bundle = _bundle(tmp_path / "bundles" / "m.kbundle")
    work = tmp_path / "area" / "work"
    work.mkdir(parents=True)
    (work / "notes.txt").write_text("mine")
    before = tree(tmp_path)

    here = run_cli("unpack", bundle, "-d", ".", "--force", "--no-load", cwd=work)
    assert_clean_failure(here, 2)
    assert here.stderr == (
        f"kbundle: error: will not replace destination .: it is the current directory; "
        f"{_REFUSED_HINT}\n"
    )
    parent = run_cli("unpack", bundle, "-d", "..", "--force", "--no-load", cwd=work)
    assert_clean_failure(parent, 2)
    assert parent.stderr == (
        f"kbundle: error: will not replace destination ..: it holds the current directory "
        f"{work.resolve()}; {_REFUSED_HINT}\n"
    )
    assert tree(tmp_path) == before


@pytest.mark.parametrize("kind", ["user-files", "symlink-to-an-unpack", "a-file"])
def test_row27_unpack_force_refuses_what_no_unpack_made(tmp_path: Path, kind: str) -> None:
    bundle = _bundle(tmp_path / "m.kbundle")
    destination = tmp_path / "dest"
    if kind == "user-files":
        (destination / "src").mkdir(parents=True)
        (destination / "src" / "train.py").write_text("work of weeks")
        problem = "it has no kbundle.json, so no unpack made it"
    elif kind == "symlink-to-an-unpack":
        assert run_cli("unpack", bundle, "-d", tmp_path / "real", "--no-load").returncode == 0
        destination.symlink_to(tmp_path / "real")
        problem = f"it is a symbolic link to {str(tmp_path / 'real')!r}"
    else:
        destination.write_text("a file of mine")
        problem = "it is not a directory"
    before = tree(tmp_path)

    result = run_cli("unpack", bundle, "-d", destination, "--force", "--no-load")
    assert_clean_failure(result, 2)
    assert result.stderr == (
        f"kbundle: error: will not replace destination {destination}: {problem}; {_REFUSED_HINT}\n"
    )
    assert tree(tmp_path) == before


def test_row27_unpack_force_replaces_a_previous_unpack_output_only_while_unchanged(
    tmp_path: Path,
) -> None:
    old = _bundle(tmp_path / "old.kbundle", b"old model")
    new = _bundle(tmp_path / "new.kbundle", b"new model")
    destination = tmp_path / "served"
    assert run_cli("unpack", old, "-d", destination, "--no-load").returncode == 0

    replaced = run_cli("unpack", new, "-d", destination, "--force", "--no-load")
    assert replaced.returncode == 0, replaced.stderr
    assert (destination / MODEL_PATH).read_bytes() == b"new model"
    assert sorted(tree(tmp_path)) == [
        "new.kbundle",
        "old.kbundle",
        "served",
        "served/kbundle.json",
        "served/model",
        "served/model/assets",
        "served/model/assets/vocab.txt",
        "served/model/model.keras",
    ]

    # A file added to the output since is the user's: the directory is no longer replaced.
    (destination / "model" / "assets" / "notes.txt").write_text("added after the unpack")
    before = tree(tmp_path)
    refused = run_cli("unpack", old, "-d", destination, "--force", "--no-load")
    assert_clean_failure(refused, 2)
    assert refused.stderr == (
        f"kbundle: error: will not replace destination {destination}: it holds "
        f"'model/assets/notes.txt', which its kbundle.json does not list; {_REFUSED_HINT}\n"
    )
    assert tree(tmp_path) == before


@pytest.mark.keras
def test_row27_pack_and_env_export_force_never_replace_an_input_or_another_kind_of_file(
    saved_keras_file: Path, tmp_path: Path
) -> None:
    model = saved_keras_file.read_bytes()
    itself = run_cli("pack", saved_keras_file, "-o", saved_keras_file, "--force", "--no-probe")
    assert_clean_failure(itself, 2)
    assert itself.stderr == (
        f"kbundle: error: will not replace bundle {saved_keras_file}: it is the input "
        f"{saved_keras_file}; choose another -o; an input is never replaced\n"
    )
    assert saved_keras_file.read_bytes() == model

    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    other = run_cli("pack", saved_keras_file, "-o", notes, "--force", "--no-probe")
    assert_clean_failure(other, 2)
    assert other.stderr == (
        f"kbundle: error: will not replace bundle {notes}: it is not a kbundle bundle (it "
        "starts with 68656c6c); --force replaces only a bundle; choose another -o, or move it "
        "away yourself\n"
    )
    assert notes.read_text() == "hello"

    # Another kind of output never replaces a bundle: here the bundle is the input too.
    bundle = tmp_path / "m.kbundle"
    assert run_cli("pack", saved_keras_file, "-o", bundle, "--no-probe").returncode == 0
    packed = bundle.read_bytes()
    exported = run_cli("env", "export", bundle, "-o", bundle, "--force")
    assert_clean_failure(exported, 2)
    assert exported.stderr == (
        f"kbundle: error: will not replace requirements file {bundle}: it is a bundle (it "
        "starts with the zstd magic); --force replaces only a requirements file, never a "
        "bundle; choose another -o, or move it away yourself\n"
    )
    assert bundle.read_bytes() == packed


def test_row27_sign_force_never_replaces_a_key(tmp_path: Path) -> None:
    pytest.importorskip("cryptography")
    bundle = _bundle(tmp_path / "m.kbundle")
    made = run_cli("keygen", "-o", tmp_path / "release", "--no-passphrase")
    assert made.returncode == 0, made.stderr
    key = tmp_path / "release.key"
    secret = key.read_bytes()
    result = run_cli("sign", bundle, "--key", key, "-o", key, "--force")
    assert_clean_failure(result, 2)
    assert result.stderr == (
        f"kbundle: error: will not replace bundle {key}: it is not a kbundle bundle (it starts "
        "with 2d2d2d2d); --force replaces only a bundle; choose another -o, or move it away "
        "yourself\n"
    )
    assert key.read_bytes() == secret
