"""A subclassed keras.Model with get_config."""

import keras

from mypkg.layers import MyCustomLayer


class TinyModel(keras.Model):
    def __init__(self, hidden=5, **kwargs):
        super().__init__(**kwargs)
        self.hidden = hidden
        self.dense = keras.layers.Dense(hidden, activation="relu")
        self.head = MyCustomLayer(2)

    def call(self, inputs):
        return self.head(self.dense(inputs))

    def get_config(self):
        return {"hidden": self.hidden, "name": self.name}
