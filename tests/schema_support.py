"""The manifest JSON Schema (spec/manifest.schema.json) for tests: load it once, validate with it.

Any test that makes a bundle can check that the manifest it wrote is what the spec says a
1.0 writer emits::

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


@functools.cache
def manifest_validator() -> Draft202012Validator:
    """A validator for the 1.0 manifest schema; the schema itself is checked first."""
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
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


def schema_errors(manifest: Any) -> list[str]:
    """Every schema violation in ``manifest`` as ``location: message``, sorted."""
    return sorted(
        f"{error.json_path}: {error.message}"
        for error in manifest_validator().iter_errors(manifest)
    )


def assert_valid_manifest(manifest: Any) -> None:
    """Fail with every violation listed when ``manifest`` does not match the 1.0 schema."""
    errors = schema_errors(manifest)
    assert not errors, "manifest does not match spec/manifest.schema.json:\n" + "\n".join(errors)
