"""Keras integration: pack bundles during ``model.fit``.

::

    from kbundle.keras import BundleCheckpoint

    model.fit(x, y, validation_split=0.2, epochs=20, callbacks=[
        BundleCheckpoint("ckpt/epoch{epoch:03d}.kbundle", monitor="val_loss",
                         save_best_only=True, keep=3),
    ])

Importing this module imports Keras. See docs/keras-callback.md. Stable: public API.
"""

from __future__ import annotations

from kbundle.integrations.keras_checkpoint import BundleCheckpoint, CheckpointRecord

__all__ = ["BundleCheckpoint", "CheckpointRecord"]
