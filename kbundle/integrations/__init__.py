"""kbundle where models are made: a Keras callback that packs during ``fit`` and MLflow
logging. Private: the public faces are ``kbundle.keras`` and ``kbundle.mlflow``."""
