"""A layer that contains another custom layer, from another module."""

import keras

from mypkg.layers import MyCustomLayer


class Residual(keras.layers.Layer):
    """x + inner(x): the inner custom layer is made in __init__ and is not in the config."""

    def __init__(self, units=4, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.inner = MyCustomLayer(units)

    def build(self, input_shape):
        self.inner.build(input_shape)

    def call(self, inputs):
        return inputs + self.inner(inputs)

    def get_config(self):
        return {**super().get_config(), "units": self.units}
