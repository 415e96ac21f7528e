"""A module of the example project: its source travels inside the bundle."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="example")
class MyCustomLayer(keras.layers.Layer):
    """A dense layer with a learned per-unit temperature; weights are created in build()."""

    def __init__(self, units=8, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], self.units), name="kernel")
        self.temperature = self.add_weight(
            shape=(self.units,), initializer="ones", name="temperature"
        )

    def call(self, inputs):
        return ops.tanh(ops.matmul(inputs, self.kernel) / self.temperature)

    def get_config(self):
        return {**super().get_config(), "units": self.units}
