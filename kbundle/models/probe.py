"""The probe: does the loaded model still compute what the packed model computed?

At pack, a small deterministic input is made from the model's input signature (seeded
numpy, dtype-aware, unknown dimensions set to a small fixed size), the model is run on it,
and both go into the bundle as ``probe/inputs.npz`` and ``probe/outputs.npz`` with the
tolerance to compare with. At load, the model is run on the stored input again and the
largest absolute and relative differences are reported; beyond the tolerance that is an
error finding at location ``probe``, naming the likely cause.

This module is Keras-side: it imports Keras (through ``kbundle.models.keras_io``) and numpy inside
its functions only, and ``kbundle`` imports it lazily. ``.npz`` files are written with fixed
zip timestamps (reproducible bundles) and read with ``allow_pickle=False`` (reading a probe
never executes anything). Stable: the member names and the ``ProbeInfo`` fields are format
1.0; the input generator may change between releases (the stored input is what counts).
"""

from __future__ import annotations

import importlib.util
import io
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kbundle.container.manifest import CustomObject, ProbeInfo, TensorSpec
from kbundle.container.writer import PayloadFile
from kbundle.errors import ModelFileError, ModelLoadError, PackError, exception_summary
from kbundle.findings import Finding, Severity
from kbundle.models.checks.npz import read_npz

__all__ = [
    "PROBE_INPUTS",
    "PROBE_OUTPUTS",
    "ProbeComparison",
    "ProbePayload",
    "check_probe",
    "compare_probe",
    "make_probe",
    "model_signature",
    "probe_finding",
    "probe_payload",
    "probe_signature",
]

PROBE_INPUTS = "probe/inputs.npz"
PROBE_OUTPUTS = "probe/outputs.npz"
# Two rows: enough to catch a layer that mixes the batch up, small enough to cost nothing.
PROBE_BATCH = 2
# Unknown (None) non-batch dimensions, such as sequence length, get this size.
PROBE_UNKNOWN_DIM = 4
# A probe bigger than this many input elements is not "small"; the model is not probed
# (a 4K image model would otherwise store megabytes of random pixels).
MAX_PROBE_ELEMENTS = 1 << 20
# Integer inputs are usually indices (embeddings, lookups): 0 and 1 are valid for any
# vocabulary, larger values may be out of range.
PROBE_INT_HIGH = 2
PROBE_SEED = 20240917
# float32 kernels differ between TensorFlow versions, backends, oneDNN and CUDA by a few ulps
# per op; 1e-4 relative / 1e-5 absolute leaves room for that over a deep model while a
# changed definition (a different constant, activation or formula) is far outside it.
FLOAT32_TOLERANCE = (1e-4, 1e-5)
# Half precision keeps 3 decimal digits.
HALF_TOLERANCE = (1e-2, 1e-3)
FLOAT64_TOLERANCE = (1e-7, 1e-9)
# A fixed timestamp makes probe files, and so bundles, byte-for-byte reproducible.
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)


def probe_signature(specs: Sequence[TensorSpec] | None) -> list[TensorSpec] | None:
    """The input specs when a probe can be made from them (shape and dtype known), else None."""
    if not specs:
        return None
    for spec in specs:
        if spec.shape is None or spec.dtype is None or not _numeric(spec.dtype):
            return None
    return list(specs)


def _numeric(dtype: str) -> bool:
    return dtype.startswith(("float", "int", "uint", "bfloat", "bool"))


def _make_inputs(specs: Sequence[TensorSpec]) -> list[Any]:
    import numpy as np

    rng = np.random.default_rng(PROBE_SEED)
    arrays = []
    for spec in specs:
        shape = tuple(
            PROBE_BATCH if i == 0 else (d or PROBE_UNKNOWN_DIM)
            for i, d in enumerate(spec.shape or [])
        )
        dtype = spec.dtype or "float32"
        if dtype.startswith(("float", "bfloat")):
            storage = "float32" if dtype == "bfloat16" else dtype
            arrays.append(rng.standard_normal(shape).astype(storage))
        elif dtype == "bool":
            arrays.append(rng.random(shape) < 0.5)
        else:
            arrays.append(rng.integers(0, PROBE_INT_HIGH, shape).astype(dtype))
    return arrays


def _tolerance(dtypes: Sequence[str]) -> tuple[float, float]:
    if any(d in ("float16", "bfloat16") for d in dtypes):
        return HALF_TOLERANCE
    if dtypes and all(d == "float64" for d in dtypes):
        return FLOAT64_TOLERANCE
    return FLOAT32_TOLERANCE


def _run(model: Any, inputs: list[Any]) -> list[Any]:
    """The model's outputs on ``inputs`` as a flat list of numpy arrays (inference mode).

    ``inputs`` are in the order of the model's flattened input structure; they are fed in
    that structure (a dict by input name, nested as declared), so a model whose dict keys
    are not in alphabetical order gets each array under its own name.
    """
    from kbundle.models.keras_io import input_structure, native_logs
    from kbundle.models.keras_io import keras as keras_module

    keras = keras_module()
    import numpy as np

    structure = input_structure(model)
    if structure is not None and len(keras.tree.flatten(structure)) == len(inputs):
        feed = keras.tree.pack_sequence_as(structure, inputs)
    else:  # Keras cannot tell (a subclassed model): one array, or the list of them
        feed = inputs[0] if len(inputs) == 1 else inputs
    with native_logs():  # the first op of a fresh TensorFlow may log its start-up again
        result = model(feed, training=False)
    return [np.asarray(keras.ops.convert_to_numpy(t)) for t in keras.tree.flatten(result)]


def model_signature(model: Any) -> list[TensorSpec] | None:
    """The probe's input specs for a live model, in the order of its flattened input
    structure (kbundle.models.keras_io.input_structure); None when they are unknown."""
    from kbundle.models.keras_io import input_structure, tensor_specs
    from kbundle.models.keras_io import keras as keras_module

    structure = input_structure(model)
    if structure is None:
        return None
    return probe_signature(tensor_specs(keras_module().tree.flatten(structure)))


def _write_npz(path: Path, arrays: Sequence[Any], prefix: str) -> int:
    import numpy as np

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        for index, array in enumerate(arrays):
            data = io.BytesIO()
            np.lib.format.write_array(data, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(
                zipfile.ZipInfo(f"{prefix}_{index}.npy", date_time=_ZIP_EPOCH), data.getvalue()
            )
    path.write_bytes(buffer.getvalue())
    return len(buffer.getvalue())


def make_probe(
    model: Any, specs: Sequence[TensorSpec], directory: Path
) -> tuple[ProbeInfo, list[PayloadFile]]:
    """Run ``model`` on a deterministic input; write both under ``directory``; return the record."""
    inputs = _make_inputs(specs)
    if sum(a.size for a in inputs) > MAX_PROBE_ELEMENTS:
        raise PackError(
            f"the probe input would hold {sum(a.size for a in inputs)} elements, more than "
            f"{MAX_PROBE_ELEMENTS}",
            hint="pack with --no-probe (probe=False) for models with very large inputs",
        )
    try:
        outputs = _run(model, inputs)
    except Exception as exc:
        raise PackError(
            f"the model failed on the probe input: {exception_summary(exc)}",
            hint="pack with --no-probe (probe=False) if the model cannot run on random inputs",
        ) from exc
    rtol, atol = _tolerance([str(o.dtype) for o in outputs])
    (directory / "probe").mkdir(exist_ok=True)
    payload = []
    for member, arrays, prefix in (
        (PROBE_INPUTS, inputs, "input"),
        (PROBE_OUTPUTS, outputs, "output"),
    ):
        target = directory / member
        size = _write_npz(target, arrays, prefix)
        payload.append(PayloadFile(member, target, size))
    return ProbeInfo(inputs=PROBE_INPUTS, outputs=PROBE_OUTPUTS, rtol=rtol, atol=atol), payload


@dataclass(frozen=True, slots=True)
class ProbePayload:
    """The probe for pack: its record and files (``None``/empty when no probe is stored),
    notes for the user, and the loaded model's own description when pack had to load a model
    file to run it (it knows the outputs a file's config does not say)."""

    info: ProbeInfo | None = None
    files: tuple[PayloadFile, ...] = ()
    notes: tuple[str, ...] = ()
    described: dict[str, Any] | None = None


def probe_payload(
    model: Any,
    source: Path,
    fmt: str,
    directory: Path,
    *,
    wanted: bool | None,
) -> ProbePayload:
    """The probe for pack; ``wanted=None`` probes when it can.

    A live model is run directly; a model file is loaded with Keras first (safe mode on).
    When the probe is not possible, ``wanted=None`` gives a note saying why (``kbundle pack``
    prints it) and ``wanted=True`` an error.
    """
    if wanted is False:
        return ProbePayload()
    from kbundle.models import keras_io

    described: dict[str, Any] | None = None

    def skip(reason: str) -> ProbePayload:
        if wanted:
            raise PackError(
                f"cannot probe the model: {reason}", hint="pack with --no-probe (probe=False)"
            )
        return ProbePayload(notes=(f"no probe stored: {reason}",), described=described)

    live = model if keras_io.is_keras_model(model) else None
    if live is None:
        if importlib.util.find_spec("keras") is None:
            return skip("Keras is not installed here to run the model")
        unzipped = fmt == "keras-dir" and keras_io.loads_unzipped_keras()
        if fmt not in ("keras", "h5") and not unzipped:
            kind = {"savedmodel": "a SavedModel", "keras-dir": "an unzipped .keras directory"}
            return skip(f"Keras does not load {kind.get(fmt, fmt)} as a model to run it")
        try:
            live = _load_to_probe(source, fmt, directory)
        except ModelLoadError as exc:
            return skip(f"the model does not load here ({exc.message})")
        described = keras_io.describe_live_model(live)
    specs = model_signature(live)
    if specs is None:
        return skip(
            "the model's input signature (shapes and numeric dtypes) is unknown: "
            + _unknown_signature(live)
        )
    try:
        info, payload = make_probe(live, specs, directory)
    except PackError as exc:
        if wanted:
            raise
        return ProbePayload(notes=(f"no probe stored: {exc.message}",), described=described)
    return ProbePayload(info, tuple(payload), (), described)


def _load_to_probe(source: Path, fmt: str, directory: Path) -> Any:
    """The model file loaded to run the probe (safe mode on, not compiled). A Keras 3
    ``.keras`` zip is unzipped into ``directory`` and loaded from there, as ``kbundle.load``
    does: from the zip, Keras first copies the weights into memory, which for a 1 GiB model
    cost more time and memory than the unzipped copy (benchmarks/README.md)."""
    import shutil

    from kbundle.models import keras_io
    from kbundle.models.checks import unzip_sound_keras
    from kbundle.models.formats import keras_major, model_saved_by

    zipped_keras3 = fmt == "keras" and keras_major(model_saved_by(source, fmt)) == 3
    if not zipped_keras3 or not keras_io.loads_unzipped_keras():
        return keras_io.load_model(source, fmt=fmt, compile=False)
    unzipped = directory / "probe-model"
    try:
        unzip_sound_keras(
            source,
            unzipped,
            label=source.name,
            hint=f"run 'kbundle doctor {source}'",
            name=str(source),
        )
        return keras_io.load_model(unzipped, fmt="keras-dir", compile=False)
    except ModelFileError as exc:  # the unzip checks every member's CRC-32: pack refuses
        raise PackError(exc.message, hint=exc.hint, findings=exc.findings) from None
    finally:
        shutil.rmtree(unzipped, ignore_errors=True)  # the weights are in the model now


def _unknown_signature(model: Any) -> str:
    """Why a live model's input signature is unknown, in the user's terms."""
    from kbundle.models.keras_io import input_structure, tensor_specs
    from kbundle.models.keras_io import keras as keras_module

    structure = input_structure(model)
    if structure is None:
        return "a subclassed model that was never called (call it once on real data first)"
    odd = [
        spec
        for spec in tensor_specs(keras_module().tree.flatten(structure)) or []
        if spec.dtype is None or not _numeric(spec.dtype)
    ]
    named = ", ".join(f"{s.name or '?'} ({s.dtype})" for s in odd)
    return f"inputs of non-numeric dtype: {named}" if named else "no input shapes recorded"


@dataclass(frozen=True, slots=True)
class ProbeComparison:
    """The largest differences between the stored and the recomputed outputs."""

    max_abs: float
    max_rel: float
    within: bool
    detail: str | None = None  # a structural mismatch (count, shape), when there is one

    def describe(self) -> str:
        return self.detail or f"max abs diff {self.max_abs:.3g}, max rel diff {self.max_rel:.3g}"


def compare_probe(model: Any, directory: Path, info: ProbeInfo) -> ProbeComparison:
    """Re-run the stored probe input through ``model`` and compare with the stored outputs."""
    import numpy as np

    try:
        inputs = read_npz(directory / info.inputs, info.inputs)
        expected = read_npz(directory / info.outputs, info.outputs)
    except ModelFileError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, IndexError) as exc:
        raise ModelLoadError(
            f"the probe files are unreadable: {exc}",
            hint="the bundle is damaged; load with --no-probe (probe=False) to skip the probe",
        ) from exc
    try:
        actual = _run(model, inputs)
    except Exception as exc:
        return ProbeComparison(
            float("inf"),
            float("inf"),
            False,
            f"the model failed on the probe input: {type(exc).__name__}",
        )
    if len(actual) != len(expected):
        return ProbeComparison(
            float("inf"), float("inf"), False, f"{len(actual)} outputs, {len(expected)} recorded"
        )
    max_abs = max_rel = 0.0
    within = True
    for index, (got, want) in enumerate(zip(actual, expected, strict=True)):
        if got.shape != want.shape:
            return ProbeComparison(
                float("inf"),
                float("inf"),
                False,
                f"output {index} has shape {got.shape}, recorded {want.shape}",
            )
        got64, want64 = got.astype("float64"), want.astype("float64")
        same = (got64 == want64) | (np.isnan(got64) & np.isnan(want64))
        with np.errstate(invalid="ignore"):
            diff = np.where(same, 0.0, np.abs(got64 - want64))
        diff = np.where(np.isnan(diff), np.inf, diff)  # NaN against a number
        if diff.size:
            max_abs = max(max_abs, float(diff.max()))
            scale = np.maximum(
                np.abs(np.where(np.isfinite(want64), want64, 0.0)), np.finfo("float64").tiny
            )
            max_rel = max(max_rel, float((diff / scale).max()))
            bound = info.atol + info.rtol * np.abs(np.where(np.isfinite(want64), want64, 0.0))
            within = within and bool(np.all(diff <= bound))
    return ProbeComparison(max_abs, max_rel, within)


def probe_finding(
    comparison: ProbeComparison,
    info: ProbeInfo,
    *,
    differences: Sequence[Finding],
    custom_objects: Sequence[CustomObject],
) -> Finding:
    """The ``probe`` finding: ok within tolerance, else an error naming the likely cause."""
    expected = f"within rtol {info.rtol:g}, atol {info.atol:g}"
    if comparison.within:
        return Finding(
            location="probe",
            problem="outputs match the recorded ones",
            severity=Severity.OK,
            expected=expected,
            actual=comparison.describe(),
        )
    return Finding(
        location="probe",
        problem="the loaded model computes different outputs than the packed model",
        severity=Severity.ERROR,
        expected=expected,
        actual=comparison.describe(),
        why=_likely_cause(differences, custom_objects),
        fix="load the model in the recorded environment ('kbundle env create') and with the custom "
        "code it was packed with; "
        "--no-probe (probe=False) skips this check",
    )


def _likely_cause(differences: Sequence[Finding], custom_objects: Sequence[CustomObject]) -> str:
    causes = []
    defined_here = [o.name for o in custom_objects if o.transport == "distribution"]
    if defined_here:
        causes.append(
            f"a changed definition of {', '.join(defined_here)}, which came from installed code, "
            "not the bundle"
        )
    changed = {f.location for f in differences if f.severity > Severity.OK}
    if "keras.backend" in changed:
        causes.append("another Keras backend computes differently")
    if changed & {
        "tensorflow.build",
        "tensorflow.version",
        "keras.version",
        "keras.major",
        "libraries.jax",
        "libraries.torch",
    }:
        causes.append("another build or version of TensorFlow/Keras changed the numerics")
    if not causes:
        causes.append(
            "a custom layer, loss or activation whose definition changed since packing "
            "(a class registered under the same name), or a changed Keras/TensorFlow numeric kernel"
        )
    return "likely cause: " + "; or ".join(causes)


def check_probe(
    model: Any,
    directory: Path,
    info: ProbeInfo,
    *,
    differences: Sequence[Finding],
    custom_objects: Sequence[CustomObject],
) -> Finding:
    """Re-run the stored probe input (under ``directory``) through the loaded ``model`` and
    compare: the ``probe`` finding (kbundle.pipelines.load applies the policy to it)."""
    return probe_finding(
        compare_probe(model, directory, info),
        info,
        differences=differences,
        custom_objects=custom_objects,
    )
