"""Filtering TensorFlow's native start-up chatter out of the command line's stderr.

TensorFlow 2.21 writes absl INFO lines (oneDNN notices, "Could not find cuda drivers") to
file descriptor 2 from C++, where neither ``TF_CPP_MIN_LOG_LEVEL`` nor Python logging reach.
The CLI runs Keras imports and loads inside :func:`filtered_native_stderr`, which captures fd 2
in a temporary file and writes back every line except known informational noise. Only the CLI
uses it: a library must not redirect a host process's file descriptors. ``KBUNDLE_TF_LOGS=1``
turns the filter off. Stable: internal.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Iterator

__all__ = ["filtered_native_stderr", "is_noise"]

_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|I\d{4} .*"  # absl INFO lines
    r"|[EW]\d{4} .*(cuInit|cuda_platform|cudart_stub|cuda_dnn|cuda_fft|cuda_blas"
    r"|cpu_feature_guard).*"
    r"|To enable the following instructions: "
    r".*rebuild TensorFlow with the appropriate compiler flags\."
    r")$"
)


def is_noise(line: str) -> bool:
    """True for a line of TensorFlow start-up chatter that says nothing about the user's model."""
    return bool(_NOISE.match(line.rstrip("\n")))


@contextlib.contextmanager
def filtered_native_stderr() -> Iterator[None]:
    """Capture fd 2 for the duration; afterwards write back every line that is not noise."""
    if os.environ.get("KBUNDLE_TF_LOGS") == "1":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [
                line
                for line in capture.read().decode("utf-8", "replace").splitlines(keepends=True)
                if not is_noise(line)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
