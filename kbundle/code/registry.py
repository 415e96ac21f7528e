"""Keras's custom-object registry, as packing and loading bundled code need it.

Looking a registered name up (``acme>MyLayer``), giving the registry back its previous
entries after bundled code registered its own, and a custom-object scope in which a bundle's
objects win over same-named registered ones. The Keras side: imported lazily, it imports
Keras inside its functions (through ``keras_io``). Stable: internal.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kbundle.models.keras_io import keras

__all__ = ["preferred_objects", "registered_object", "registry_restored"]


def registered_object(name: str) -> Any:
    """What Keras's global registry holds under ``name`` (``acme>MyLayer``), or ``None``."""
    return keras().saving.get_registered_object(name)


def preferred_objects(objects: dict[str, Any]) -> Any:
    """A Keras custom-object scope for ``objects`` (a context manager). Keras looks a scope up
    before its global registry, so inside it a bundle's own objects win over same-named ones
    this process registered; ``custom_objects=`` alone ranks below the registry."""
    return keras().saving.custom_object_scope(objects)


@contextmanager
def registry_restored() -> Iterator[None]:
    """Run a block that may register objects with Keras (importing bundled code does), then
    give every name registered before the block its previous object back. Names that were
    free stay registered, so a loaded model saves again under the names it was loaded by."""
    registry = keras().saving.get_custom_objects()  # Keras's live global dict
    before = dict(registry)
    try:
        yield
    finally:
        for name, obj in before.items():
            if registry.get(name) is not obj:
                registry[name] = obj
