"""Where bundles live and where outputs go: local files, ``-`` (standard input and output) and
the URLs of fsspec filesystems (``locations``); opening a bundle for reading as a stream
(``sources``: for URLs over ``remote``, ``readahead`` and ``failures``, the retry policy and
the messages); writing one complete or not at all (``outputs``: a local file made atomically
by ``atomic``, standard output, an ``s3`` multipart upload whose first part is sent last, any
other fsspec upload); ``--force`` replacing only an earlier kbundle output, never an input;
an MLflow ``runs:/`` or ``models:/`` URI resolved to a downloaded file (``mlflow_artifacts``).
The container reads and writes the streams given to it and never knows where they lead.
"""
