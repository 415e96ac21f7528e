"""Objects registered under a package name."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="acme")
class Scale(keras.layers.Layer):
    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def build(self, input_shape):
        self.gain = self.add_weight(
            shape=(input_shape[-1],), initializer="random_normal", name="gain"
        )

    def call(self, inputs):
        return inputs * self.gain * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}


@keras.saving.register_keras_serializable(package="acme")
def soft_sign(x):
    return x / (1.0 + ops.abs(x))
