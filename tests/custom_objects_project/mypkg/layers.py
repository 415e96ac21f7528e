"""Layers, an activation, a loss and a metric of the user's project."""

import keras
from keras import ops


class MyCustomLayer(keras.layers.Layer):
    """The classic custom layer: its weights are created in build()."""

    def __init__(self, units=3, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight(
            shape=(input_shape[-1], self.units), initializer="glorot_uniform", name="kernel"
        )
        self.bias = self.add_weight(shape=(self.units,), initializer="random_normal", name="bias")

    def call(self, inputs):
        return ops.matmul(inputs, self.kernel) + self.bias

    def get_config(self):
        return {**super().get_config(), "units": self.units}


class EagerWeights(keras.layers.Layer):
    """A layer that creates its weights in __init__."""

    def __init__(self, input_dim=4, units=3, **kwargs):
        super().__init__(**kwargs)
        self.input_dim = input_dim
        self.units = units
        self.kernel = self.add_weight(
            shape=(input_dim, units), initializer="random_normal", name="kernel"
        )

    def call(self, inputs):
        return ops.tanh(ops.matmul(inputs, self.kernel))

    def get_config(self):
        return {**super().get_config(), "input_dim": self.input_dim, "units": self.units}


def scaled_tanh(x):
    """A custom activation function, deliberately not registered."""
    return 1.7159 * ops.tanh(0.6666 * x)


class MyLoss(keras.losses.Loss):
    """A Huber-like loss."""

    def __init__(self, delta=0.5, name="my_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.delta = delta

    def call(self, y_true, y_pred):
        error = ops.abs(y_true - y_pred)
        quadratic = 0.5 * error**2
        linear = self.delta * (error - 0.5 * self.delta)
        return ops.mean(ops.where(error < self.delta, quadratic, linear), axis=-1)

    def get_config(self):
        return {**super().get_config(), "delta": self.delta}


class MyMetric(keras.metrics.Metric):
    """The running sum of absolute errors."""

    def __init__(self, name="my_metric", **kwargs):
        super().__init__(name=name, **kwargs)
        self.total = self.add_variable(shape=(), initializer="zeros", name="total")

    def update_state(self, y_true, y_pred, sample_weight=None):
        self.total.assign_add(ops.sum(ops.abs(y_true - y_pred)))

    def result(self):
        return self.total
