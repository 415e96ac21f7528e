"""A module with an import-time side effect: it proves whether bundled code ran."""

import os

import keras

_MARKER = os.environ.get("KBUNDLE_SIDE_EFFECT_MARKER")
if _MARKER:
    with open(_MARKER, "a", encoding="utf-8") as handle:
        handle.write(f"sidefx imported by process {os.getpid()}\n")


class Tripled(keras.layers.Layer):
    def call(self, inputs):
        return inputs * 3.0
