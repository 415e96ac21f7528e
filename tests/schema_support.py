"""The manifest JSON Schema (spec/manifest.schema.json) for tests: load it once, validate with it.

Any test that makes a bundle can check that the manifest it wrote is what the spec says a
writer of the current format emits::

    from schema_support import assert_valid_manifest
    assert_valid_manifest(json.loads(kbundle.inspect(path).manifest_bytes))

Format keywords (``date-time``) are annotations only here, as the schema's own text says:
the patterns carry the checks.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SPEC_DIR = Path(__file__).resolve().parents[1] / "spec"
SCHEMA_PATH = SPEC_DIR / "manifest.schema.json"
# What a format 1.0 writer emitted, kept unchanged (1.0 bundles are still read).
SCHEMA_1_0_PATH = SPEC_DIR / "manifest-1.0.schema.json"


@functools.cache
def manifest_validator(path: Path = SCHEMA_PATH) -> Draft202012Validator:
    """A validator for the manifest schema at ``path`` (the current format's by default);
    the schema itself is checked first."""
    schema = json.loads(path.read_text(encoding="utf-8"))
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


@functools.cache
def definition_validator(name: str) -> Draft202012Validator:
    """A validator for one of the schema's ``$defs`` (``memberPath``, ``envPath``, ...) alone,
    so a test can ask what the schema says of one value without the rules around it."""
    definitions = manifest_validator().schema["$defs"]
    return Draft202012Validator({"$defs": definitions, "$ref": f"#/$defs/{name}"})


def definition_accepts(name: str, value: Any) -> bool:
    """Whether ``value`` is valid under the schema's ``$defs`` entry ``name``."""
    return bool(definition_validator(name).is_valid(value))


def schema_errors(manifest: Any, path: Path = SCHEMA_PATH) -> list[str]:
    """Every violation in ``manifest`` of the schema at ``path``, as ``location: message``."""
    return sorted(
        f"{error.json_path}: {error.message}"
        for error in manifest_validator(path).iter_errors(manifest)
    )


def assert_valid_manifest(manifest: Any, path: Path = SCHEMA_PATH) -> None:
    """Fail with every violation listed when ``manifest`` does not match the schema at
    ``path`` (the current format's by default)."""
    errors = schema_errors(manifest, path)
    assert not errors, f"manifest does not match {path.name}:\n" + "\n".join(errors)
