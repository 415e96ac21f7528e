"""Render docs/python-api.md from kbundle's public API (``kbundle.__all__``, and the
``__all__`` of the public submodules ``kbundle.keras`` and ``kbundle.mlflow``): signatures
and docstrings, so the reference says what the code does.

    python tools/api_reference.py          # rewrite docs/python-api.md
    python tools/api_reference.py --check  # exit 1 if it is stale (the tests do this)
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import importlib  # noqa: E402

import kbundle  # noqa: E402

# Public submodules, documented after the top level (importing kbundle.keras imports Keras).
SUBMODULES = ("kbundle.keras", "kbundle.mlflow")
TARGET = REPO / "docs" / "python-api.md"

INTRO = """# kbundle Python API

Generated from the code by `tools/api_reference.py`; a test fails when it is stale.

<!-- snippet: setup model -->
```python
import kbundle

result = kbundle.pack(model, "model.kbundle")          # a keras.Model or a model path
kbundle.verify("model.kbundle", expect=result.digest)  # raises kbundle.IntegrityError
model = kbundle.load("model.kbundle", expect=result.digest)
```

`import kbundle` does not import TensorFlow or Keras; `pack` of a live model, `load`, and
`unpack(load_model=True)` do. The library never prints or exits: every failure is a
`kbundle.KbundleError` subclass whose `str()` is one line (what failed, the value, the fix),
with every individual problem in `.findings`. Each error class also subclasses the builtin it
stands for (`IntegrityError` is a `ValueError`, `OutputExistsError` a `FileExistsError`, ...).
"""


def _entry(name: str, obj: object) -> list[str]:
    doc = inspect.getdoc(obj) or "(no docstring)"
    if inspect.isclass(obj):
        bases = ", ".join(base.__name__ for base in obj.__bases__ if base is not object)
        heading = f"### class `{name}`" + (f" ({bases})" if bases else "")
        return [heading, "", doc, ""]
    if inspect.isroutine(obj):
        signature = str(inspect.signature(obj)).replace("'", "")
        return [f"### `{name}{signature}`", "", doc, ""]
    return [f"### `{name}`", "", f"A type: `{obj!r}`", ""]


def render() -> str:
    functions, classes, other = [], [], []
    for name in sorted(kbundle.__all__, key=str.lower):
        obj = getattr(kbundle, name)
        if inspect.ismodule(obj):
            continue
        kind = classes if inspect.isclass(obj) else functions if inspect.isroutine(obj) else other
        kind.append((name, obj))
    lines = [INTRO, "## Functions", ""]
    for name, obj in functions:
        lines += _entry(name, obj)
    lines += ["## Classes and errors", ""]
    for name, obj in classes:
        lines += _entry(name, obj)
    for name, obj in other:
        lines += _entry(name, obj)
    for module_name in SUBMODULES:
        module = importlib.import_module(module_name)
        lines += [f"## `{module_name}`", "", inspect.getdoc(module) or "", ""]
        for name in sorted(module.__all__, key=str.lower):
            lines += _entry(f"{module_name}.{name}", getattr(module, name))
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    text = render()
    if "--check" in sys.argv:
        current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
        sys.exit(
            0
            if current == text
            else "docs/python-api.md is stale: run python tools/api_reference.py"
        )
    TARGET.write_text(text, encoding="utf-8")
