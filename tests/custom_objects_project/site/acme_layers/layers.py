import keras
from keras import ops


@keras.saving.register_keras_serializable(package="acme_layers")
class Clip(keras.layers.Layer):
    def __init__(self, limit=0.5, **kwargs):
        super().__init__(**kwargs)
        self.limit = limit

    def call(self, inputs):
        return ops.clip(inputs, -self.limit, self.limit)

    def get_config(self):
        return {**super().get_config(), "limit": self.limit}
