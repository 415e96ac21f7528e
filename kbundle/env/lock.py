"""The hash lock of a bundle's pins (``env/requirements.lock``), made with pip-tools.

``pip-compile --generate-hashes`` asks the package index about every pinned file, which is
why it is only made when asked (``pack --lock``; benchmarks/README.md has what it costs). The
lock holds exactly the pinned closure (anything pip-compile adds beyond it, such as plain
``tensorflow`` pulled in by tf-keras's metadata, is dropped and named in the note). When the
index is unreachable or pip-tools is missing, pack still succeeds and the manifest says the
lock is unhashed and why. Stable: the member name is format 1.0.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from kbundle.env.distributions import canonical_name
from kbundle.env.requirement_lines import PIN_RE, parse_pins
from kbundle.env.tools import last_line, run_tool

__all__ = ["LOCK_TIMEOUT_SECONDS", "hash_lock"]

# pip-compile asks the index about every pinned file; a TensorFlow closure took 30-90 s
# here. Ten minutes allows a slow mirror; beyond that pack gives up on hashes, not the pack.
LOCK_TIMEOUT_SECONDS = 600
# pip's own default is 15 s per connection and 5 retries; an unreachable index should cost
# seconds, not minutes, so pip-compile gets a short leash per request.
_PIP_ARGS = "--timeout 20 --retries 1"


def hash_lock(
    requirements: Path, output: Path, *, timeout: float = LOCK_TIMEOUT_SECONDS
) -> str | None:
    """Write ``output`` with hashes for every pin in ``requirements``; return None or why not.

    The lock is filtered to exactly the pinned closure, so installing it with
    ``--no-deps --require-hashes`` gives back the recorded distributions and nothing else.
    """
    if importlib.util.find_spec("piptools") is None:
        return "pip-tools is not installed (pip install 'kbundle[lock]')"
    raw = output.with_suffix(".raw").absolute()  # the tool starts in an empty directory
    arguments = [
        "-m",
        "piptools",
        "compile",
        "--no-config",
        "--generate-hashes",
        "--allow-unsafe",
        "--no-emit-index-url",
        "--no-emit-find-links",
        "--strip-extras",
        "--no-header",
        "--no-annotate",
        "--quiet",
        "--pip-args",
        _PIP_ARGS,
        "--output-file",
        str(raw),
        str(requirements.absolute()),
    ]
    done = run_tool(sys.executable, arguments, timeout=timeout)
    if done is None:
        return (
            f"pip-compile did not finish within {timeout:.0f} s (is the package index reachable?)"
        )
    if done.returncode != 0 or not raw.is_file():
        detail = last_line(done.stderr or done.stdout)
        return f"pip-compile failed (is the package index reachable?): {detail}"
    wanted = parse_pins(requirements.read_text(encoding="utf-8"))
    blocks = _lock_blocks(raw.read_text(encoding="utf-8"))
    raw.unlink()
    kept, dropped, wrong = [], [], []
    for name, version, block in blocks:
        if name not in wanted:
            dropped.append(f"{name}=={version}")
        elif wanted[name] != version:
            wrong.append(f"{name} {version} (pinned {wanted[name]})")
        else:
            kept.append(block)
    absent = sorted(set(wanted) - {name for name, _, _ in blocks})
    if wrong or absent:
        return "pip-compile did not reproduce the pins: " + ", ".join(
            wrong + [f"{n} missing" for n in absent]
        )
    header = [
        "# Hash-locked closure (pip-compile --generate-hashes). Install with:",
        "#   pip install --no-deps --require-hashes -r requirements.lock",
    ]
    header += [f"# dropped (not installed when packing): {item}" for item in dropped]
    output.write_text("\n".join(header + kept) + "\n", encoding="utf-8")
    return None


def _lock_blocks(text: str) -> list[tuple[str, str, str]]:
    """Entries of a pip-compile output: ``(name, version, 'name==version \\ --hash=...')``."""
    blocks: list[tuple[str, str, str]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = PIN_RE.match(line)
        if match:
            blocks.append(
                (canonical_name(match.group(1)), match.group(2).rstrip("\\").strip(), line)
            )
        elif blocks and line.startswith((" ", "\t")):
            name, version, block = blocks[-1]
            blocks[-1] = (name, version, block + "\n" + line)
    return blocks
