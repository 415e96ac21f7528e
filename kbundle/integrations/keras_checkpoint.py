"""``BundleCheckpoint``: a Keras callback that writes a verified bundle during ``fit``, with
the checkpoint semantics of ``keras.callbacks.ModelCheckpoint``.

What happens on the training thread is what a plain checkpoint does: at the end of an epoch
the file name is formatted (``{epoch}`` and the logs), the monitored value decides
(``save_best_only``, ``mode``, ``initial_value_threshold``), and the model is saved with
``model.save`` (into a private temporary directory). Packing that file (hashing, compressing,
recording the environment, signing) runs on one background thread at a lower priority (on
Linux), and writes atomically: a bundle appears complete under its final name or not at all.
Training waits only when the packer is still busy with the previous checkpoint (at most one
save waits in line, so temporary files cannot pile up), and at the end of ``fit``, which
returns once every bundle is written.
A failure in the background is raised on the training thread at the next epoch end (or at
the end of ``fit``). ``keep=N`` keeps the N most recent bundles this callback wrote and
deletes the older ones. Stable: the public class is ``kbundle.keras.BundleCheckpoint``.
"""

from __future__ import annotations

import contextlib
import math
import os
import queue
import shutil
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kbundle.errors import UsageError
from kbundle.models import keras_io
from kbundle.pipelines.pack import SavedLiveModel, pack, save_live_model
from kbundle.signing.keys import SigningKey, load_signing_key, read_passphrase

__all__ = ["BundleCheckpoint", "CheckpointRecord"]

BUNDLE_SUFFIX = ".kbundle"
MODES = ("auto", "min", "max")
# Checkpoints are small next to the training they come from: zstd at level 1 on the packing
# thread alone (no zstd workers) leaves the CPUs to the training.
_DEFAULT_LEVEL = 1
_DEFAULT_THREADS = 0
# Saves waiting for the packer: one, so that a slow disk costs at most one temporary copy of
# the model before training waits for it.
_PENDING_SAVES = 1
# How much lower than the training the packing thread runs (Linux thread niceness, 0-19):
# on a machine whose CPUs the training keeps busy, packing takes what training leaves.
_PACKING_NICENESS = 10

if TYPE_CHECKING:

    class _Callback:
        model: Any

else:
    _Callback = keras_io.keras().callbacks.Callback


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckpointRecord:
    """One bundle the callback wrote: the epoch (1-based, as in file names), where, its digest."""

    epoch: int
    path: Path
    digest: str

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "path": str(self.path), "digest": self.digest}


@dataclass(frozen=True, slots=True)
class _Job:
    saved: SavedLiveModel
    scratch: Path
    path: Path
    epoch: int
    labels: dict[str, str]


class BundleCheckpoint(_Callback):
    """Pack the model into a bundle at the end of epochs, like ``ModelCheckpoint`` saves it.

    ``filepath`` (ending in ``.kbundle``) may hold ``{epoch}`` (1-based) and any key of the
    epoch's logs (``{val_loss:.3f}``). ``monitor``, ``mode`` (``auto``: lower is better for a
    loss, higher for a metric Keras marks as one to maximise, such as accuracy),
    ``save_best_only`` and ``initial_value_threshold`` are those of
    ``keras.callbacks.ModelCheckpoint``; only ``save_freq="epoch"`` is supported.

    ``keep`` (None: all) is how many of the bundles this callback wrote are kept; older ones
    are deleted. ``sign_with`` signs each bundle: a key from :func:`kbundle.load_signing_key`
    or the path of one (its passphrase from ``$KBUNDLE_KEY_PASSPHRASE``). ``labels`` are
    recorded in each bundle's metadata, with ``epoch`` and the epoch's logs unless
    ``record_logs=False``; ``assets``, ``custom_objects``, ``provenance``, ``level`` and
    ``threads`` are passed to :func:`kbundle.pack`. No probe is stored (it would run the model
    off the training thread). ``records`` lists what was written, oldest first.
    """

    def __init__(
        self,
        filepath: str | os.PathLike[str],
        monitor: str = "val_loss",
        *,
        save_best_only: bool = False,
        mode: str = "auto",
        save_freq: str = "epoch",
        initial_value_threshold: float | None = None,
        keep: int | None = None,
        sign_with: SigningKey | str | os.PathLike[str] | None = None,
        labels: Mapping[str, str] | None = None,
        record_logs: bool = True,
        assets: Sequence[str | os.PathLike[str]] = (),
        custom_objects: Mapping[str, Any] | None = None,
        provenance: bool = True,
        level: int | str | None = _DEFAULT_LEVEL,
        threads: int = _DEFAULT_THREADS,
    ) -> None:
        super().__init__()
        self.filepath = os.fspath(filepath)
        if not self.filepath.endswith(BUNDLE_SUFFIX):
            raise UsageError(
                f"BundleCheckpoint writes bundles; filepath must end in {BUNDLE_SUFFIX}: "
                f"{self.filepath!r}",
                hint="use a name like 'ckpt/epoch{epoch:03d}.kbundle'",
            )
        if mode not in MODES:
            raise UsageError(f"mode must be one of {MODES}: {mode!r}", hint="use mode='min'")
        if save_freq != "epoch":
            raise UsageError(
                f"BundleCheckpoint saves at the end of epochs only: save_freq={save_freq!r}",
                hint="use save_freq='epoch' (the default)",
            )
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep < 1):
            raise UsageError(
                f"keep must be a positive number of bundles, or None for all: {keep!r}",
                hint="use keep=3",
            )
        self.monitor = monitor
        self.mode = mode
        self.save_best_only = save_best_only
        self.best: float | None = initial_value_threshold
        self.keep = keep
        self.records: list[CheckpointRecord] = []
        self._signing_key = _signing_key(sign_with)
        self._labels = dict(labels or {})
        self._record_logs = record_logs
        self._pack_options: dict[str, Any] = {
            "assets": tuple(assets),
            "custom_objects": custom_objects,
            "provenance": provenance,
            "level": level,
            "threads": threads,
        }
        self._minimize: bool | None = None
        self._jobs: queue.Queue[_Job | None] = queue.Queue(maxsize=_PENDING_SAVES)
        self._worker: threading.Thread | None = None
        self._failure: BaseException | None = None
        self._failure_raised = False
        self._scratch: tempfile.TemporaryDirectory[str] | None = None
        self._written: list[Path] = []  # by this callback, oldest first, for keep=

    # -- Keras hooks ---------------------------------------------------------------------------

    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self._start()

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        try:
            self._checkpoint(epoch, logs)
        except BaseException:
            self._stop()  # Keras skips on_train_end once a callback raises
            raise

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        self.wait()

    # -- public ------------------------------------------------------------------------------

    def wait(self) -> None:
        """Block until every checkpoint saved so far is packed; raise a packing failure."""
        self._stop()
        self._raise_failure()

    # -- decisions (as ModelCheckpoint makes them) -------------------------------------------

    def _checkpoint(self, epoch: int, logs: Mapping[str, Any] | None) -> None:
        self._raise_failure()
        logs = dict(logs or {})
        path = self._file_path(epoch, logs)
        if not self._should_save(logs):
            return
        self._start()  # fit() without on_train_begin (a callback list built by hand)
        assert self._scratch is not None
        scratch = Path(tempfile.mkdtemp(prefix=f"epoch{epoch + 1}-", dir=self._scratch.name))
        saved = save_live_model(self.model, scratch)  # what ModelCheckpoint spends, here
        self._jobs.put(_Job(saved, scratch, path, epoch + 1, self._epoch_labels(epoch, logs)))
        self._raise_failure()

    def _file_path(self, epoch: int, logs: Mapping[str, Any]) -> Path:
        try:
            return Path(self.filepath.format(epoch=epoch + 1, **logs))
        except (KeyError, IndexError, ValueError) as exc:
            raise UsageError(
                f"cannot format the checkpoint name {self.filepath!r}: {exc!r}",
                hint=f"use {{epoch}} or a key of the epoch's logs ({', '.join(logs) or 'none'})",
            ) from None

    def _should_save(self, logs: Mapping[str, Any]) -> bool:
        if not self.save_best_only:
            return True
        current = logs.get(self.monitor)
        if current is None:
            return True  # as ModelCheckpoint: without the value, every epoch is saved
        value = float(current)
        if self._minimize is None:
            self._minimize = self._lower_is_better()
        if self.best is not None and not (
            value < self.best if self._minimize else value > self.best
        ):
            return False
        self.best = value
        return True

    def _lower_is_better(self) -> bool:
        """``mode``, or for ``auto`` what Keras's own monitor callbacks infer: lower for a
        loss, else the direction the compiled metric of that name declares."""
        if self.mode != "auto":
            return self.mode == "min"
        name = self.monitor.removeprefix("val_")
        direction = "down" if name == "loss" else None
        for metric in _compiled_metrics(self.model):
            if getattr(metric, "name", None) == name and hasattr(metric, "_direction"):
                direction = metric._direction
        if direction is None:
            raise UsageError(
                f"cannot tell whether monitor={self.monitor!r} should be minimised or maximised",
                hint="pass mode='min' or mode='max'",
            )
        return direction != "up"

    def _epoch_labels(self, epoch: int, logs: Mapping[str, Any]) -> dict[str, str]:
        recorded: dict[str, str] = {}
        if self._record_logs:
            recorded["epoch"] = str(epoch + 1)
            for key, value in logs.items():
                recorded[str(key)] = _label_value(value)
        return {**recorded, **self._labels}

    # -- the packing thread ----------------------------------------------------------------------

    def _start(self) -> None:
        if self._worker is not None:
            return
        self._scratch = tempfile.TemporaryDirectory(prefix="kbundle-checkpoint-")
        self._worker = threading.Thread(target=self._work, name="kbundle-checkpoint", daemon=True)
        self._worker.start()

    def _stop(self) -> None:
        """Let the packing thread finish what is queued, then remove the scratch directory."""
        worker = self._worker
        if worker is not None:
            self._jobs.put(None)
            worker.join()
            self._worker = None
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def _work(self) -> None:
        _lower_priority()
        while (job := self._jobs.get()) is not None:
            try:
                if self._failure is None:
                    self._pack(job)
            except BaseException as exc:  # raised again on the training thread
                self._failure = exc
            finally:
                shutil.rmtree(job.scratch, ignore_errors=True)

    def _pack(self, job: _Job) -> None:
        job.path.parent.mkdir(parents=True, exist_ok=True)
        result = pack(
            job.saved,
            job.path,
            force=True,  # as ModelCheckpoint overwrites (only a file that is a bundle)
            probe=False,
            signing_key=self._signing_key,
            labels=job.labels,
            **self._pack_options,
        )
        self.records.append(CheckpointRecord(epoch=job.epoch, path=job.path, digest=result.digest))
        if job.path in self._written:
            self._written.remove(job.path)  # rewritten: now the newest
        self._written.append(job.path)
        while self.keep is not None and len(self._written) > self.keep:
            self._written.pop(0).unlink(missing_ok=True)

    def _raise_failure(self) -> None:
        """Raise, once, what failed on the packing thread (later checkpoints are skipped)."""
        failure = self._failure
        if failure is None or self._failure_raised:
            return
        self._failure_raised = True
        raise failure


def _lower_priority() -> None:
    """Run the calling thread, and the threads it starts (the hasher), below the training.
    Linux only: there ``setpriority`` on a thread id changes that thread alone; elsewhere it
    would slow the whole process, training included."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError):  # a container may forbid it; packing still works
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), _PACKING_NICENESS)


def _compiled_metrics(model: Any) -> list[Any]:
    """The model's compiled metrics, flattened from Keras's metric containers."""
    found = []
    for metric in getattr(model, "metrics", []) or []:
        inner = getattr(metric, "metrics", None)
        found.extend(inner if isinstance(inner, list) else [metric])
    return found


def _label_value(value: Any) -> str:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return repr(number) if math.isfinite(number) else str(number)


def _signing_key(sign_with: SigningKey | str | os.PathLike[str] | None) -> SigningKey | None:
    if sign_with is None or isinstance(sign_with, SigningKey):
        return sign_with
    return load_signing_key(sign_with, passphrase=read_passphrase(None))
