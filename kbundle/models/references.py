"""What a Keras model config names: the classes and functions it needs, and its marshalled code.

A config (``config.json`` of a ``.keras`` file, ``model_config`` of an ``.h5``) is JSON; every
object in it that Keras must construct is a mapping with a ``class_name`` (Keras 3 adds
``module`` and ``registered_name``; Keras 2 ``.h5`` files have only the class name). This
module lists those references and finds Lambda layers that carry Python bytecode, reading the
JSON only: nothing is imported or resolved here (resolution needs Keras; see
``kbundle.doctor.child``). Stable: internal.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

__all__ = ["ObjectReference", "marshalled_code", "object_references"]

# Keras 3 marks values it serialises itself (tuples, arrays, tensors, lambdas) with dunder
# class names; they name no class a user must provide.
_SPECIAL_PREFIX = "__"
# Config keys whose plain string value names a function (Keras 2 saves custom activations by
# name only, e.g. "activation": "my_swish").
_FUNCTION_KEYS = ("activation", "recurrent_activation")


@dataclass(frozen=True, kw_only=True, slots=True)
class ObjectReference:
    """One class or function a config names, and where (``model.config.layers[2]``)."""

    name: str
    kind: str  # "class" or "function"
    module: str | None
    registered_name: str | None
    location: str


def _walk(config: Any, root: str = "model") -> Iterator[tuple[str, Any]]:
    """(location, value) for every value in ``config``, iteratively (configs can be deep)."""
    stack: list[tuple[str, Any]] = [(root, config)]
    while stack:
        location, value = stack.pop()
        yield location, value
        if isinstance(value, dict):
            stack.extend((f"{location}.{key}", item) for key, item in reversed(list(value.items())))
        elif isinstance(value, list):
            stack.extend(
                (f"{location}[{index}]", item) for index, item in reversed(list(enumerate(value)))
            )


def object_references(config: dict[str, Any]) -> list[ObjectReference]:
    """Every class and function ``config`` names, first occurrence of each, in config order."""
    found: dict[tuple[str, str, str | None, str | None], ObjectReference] = {}
    for location, value in _walk(config):
        reference = _reference(location, value)
        if reference is not None:
            key = (reference.name, reference.kind, reference.module, reference.registered_name)
            found.setdefault(key, reference)
    return list(found.values())


def _reference(location: str, value: Any) -> ObjectReference | None:
    if isinstance(value, str) and location.rsplit(".", 1)[-1] in _FUNCTION_KEYS:
        return ObjectReference(
            name=value, kind="function", module=None, registered_name=None, location=location
        )
    if (
        not isinstance(value, dict)
        or not isinstance(value.get("class_name"), str)
        or "config" not in value
    ):
        return None
    class_name = value["class_name"]
    module = value.get("module") if isinstance(value.get("module"), str) else None
    registered = (
        value.get("registered_name") if isinstance(value.get("registered_name"), str) else None
    )
    if class_name == "function":  # Keras 3: {"class_name": "function", "config": "relu", ...}
        if not isinstance(value["config"], str):
            return None
        return ObjectReference(
            name=value["config"],
            kind="function",
            module=module,
            registered_name=registered,
            location=location,
        )
    if class_name.startswith(_SPECIAL_PREFIX):
        return None
    return ObjectReference(
        name=class_name, kind="class", module=module, registered_name=registered, location=location
    )


def marshalled_code(config: dict[str, Any]) -> list[str]:
    """Locations of Lambda layers (and other objects) whose function is Python bytecode.

    Keras 3 writes such a function as ``{"class_name": "__lambda__", ...}``; Keras 2 writes a
    Lambda layer's ``function_type: "lambda"`` next to a base64 ``function``. Keras refuses to
    load them in safe mode, because unmarshalling bytecode runs it.
    """
    locations = []
    for location, value in _walk(config):
        if not isinstance(value, dict):
            continue
        keras3 = value.get("class_name") == "__lambda__"
        keras2 = "lambda" in (value.get("function_type"), value.get("output_shape_type"))
        if keras3 or keras2:
            locations.append(location)
    return locations
