"""The rules engine on environment records: policies, overrides, configuration, each rule.

The recorded side is always the real captured environment of this interpreter; the current
side is that record with one field changed, so each test isolates one rule. End-to-end
behaviour in real second environments is in test_env_venv.py and test_check_cli.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from kbundle.container.manifest import CustomObject, Environment, Manifest, ModelInfo, SourceFile
from kbundle.env.capture import capture_environment
from kbundle.env.rules import Policy, check_manifest, compare_environments, resolve_policy
from kbundle.errors import EnvironmentMismatchError, UsageError
from kbundle.findings import Finding, Severity

REAL = capture_environment()


def _manifest(
    environment: Environment = REAL,
    *,
    fmt: str = "keras",
    custom_objects: list[CustomObject] | None = None,
) -> Manifest:
    path = {
        "keras": "model/model.keras",
        "h5": "model/model.h5",
        "savedmodel": "model/saved_model",
    }[fmt]
    return Manifest(
        format_version="1.0",
        generator="kbundle test",
        created="2024-01-01T00:00:00Z",
        model=ModelInfo(format=fmt, path=path),
        members=[],
        environment=environment,
        custom_objects=custom_objects or [],
    )


def _differences(
    current: Environment,
    *,
    policy: str = "default",
    manifest: Manifest | None = None,
    overrides: tuple[str, ...] = (),
) -> dict[str, Finding]:
    chosen = resolve_policy(policy, overrides, start=Path("/"))
    found = compare_environments(REAL, current, manifest=manifest or _manifest(), policy=chosen)
    return {f.location: f for f in found if f.severity > Severity.OK}


def _keras(version: str | None = None, **changes: object) -> Environment:
    assert REAL.keras is not None
    return replace(
        REAL, keras=replace(REAL.keras, **({"version": version} if version else {}), **changes)
    )


def _older_minor(version: str) -> str:
    major, minor, *_ = version.split(".")
    return f"{major}.{int(minor) - 1}.0"


def _newer_patch(version: str) -> str:
    major, minor, *_ = version.split(".")
    return f"{major}.{minor}.99"


def _custom(
    name: str,
    transport: str,
    *,
    imports: list[str] | None = None,
    distributions: dict[str, str] | None = None,
) -> CustomObject:
    sources = [SourceFile(module="layers", path="code/layers.py")] if transport == "source" else []
    return CustomObject(
        name=name,
        kind="layer",
        module="layers",
        qualname=name,
        transport=transport,
        sources=sources,
        imports=imports or [],
        distributions=distributions or {},
    )


def test_the_same_environment_is_ok_in_every_field() -> None:
    report = check_manifest(_manifest(), current=REAL)
    assert report.verdict == Severity.OK
    assert report.summary() == "compatible"
    locations = [f.location for f in report.findings]
    assert locations[:5] == [
        "keras.major",
        "keras.version",
        "keras.backend",
        "tensorflow.version",
        "tensorflow.build",
    ]
    assert {
        "python.version",
        "libraries.numpy",
        "libraries.h5py",
        "platform.system",
        "platform.machine",
    } <= set(locations)
    assert all(f.why is None and f.fix is None for f in report.findings)


def test_an_older_keras_minor_is_an_error_by_default_and_a_warning_when_lenient() -> None:
    assert REAL.keras is not None
    older = _older_minor(REAL.keras.version)
    finding = _differences(_keras(older))["keras.version"]
    assert finding == Finding(
        location="keras.version",
        problem="Keras is older than the one that packed the model",
        severity=Severity.ERROR,
        expected=REAL.keras.version,
        actual=older,
        why="a file written by a newer Keras may use layers, arguments or config fields an older "
        "Keras does not know",
        fix=f"install keras=={REAL.keras.version}",
    )
    assert _differences(_keras(older), policy="lenient")["keras.version"].severity == Severity.WARN


def test_a_patch_difference_is_info_by_default_and_an_error_when_strict() -> None:
    assert REAL.keras is not None
    current = _keras(_newer_patch(REAL.keras.version))
    assert _differences(current)["keras.version"].severity == Severity.INFO
    assert _differences(current, policy="strict")["keras.version"].severity == Severity.ERROR
    assert _differences(current, policy="lenient")["keras.version"].severity == Severity.INFO


def test_keras_2_cannot_load_a_keras_3_model_under_any_policy() -> None:
    assert REAL.keras is not None
    current = _keras("2.21.0", distribution="tf-keras", major=2)
    for policy in ("default", "strict", "lenient"):
        finding = _differences(current, policy=policy)["keras.major"]
        assert (finding.severity, finding.expected, finding.actual) == (
            Severity.ERROR,
            "Keras 3 (keras)",
            "Keras 2 (tf-keras)",
        )
    assert (
        _differences(current)["keras.major"].why
        == "Keras 2 (tf-keras) cannot read models saved by Keras 3"
    )


@pytest.mark.parametrize(
    ("fmt", "severity"),
    [("keras", Severity.ERROR), ("h5", Severity.WARN), ("savedmodel", Severity.ERROR)],
)
def test_a_keras_2_model_under_keras_3_depends_on_the_file_format(
    fmt: str, severity: Severity
) -> None:
    assert REAL.keras is not None
    recorded = replace(
        REAL, keras=replace(REAL.keras, distribution="tf-keras", version="2.21.0", major=2)
    )
    found = compare_environments(recorded, REAL, manifest=_manifest(recorded, fmt=fmt))
    assert next(f for f in found if f.location == "keras.major").severity == severity


def test_backend_change_depends_on_what_custom_code_does() -> None:
    jax = replace(
        _keras(backend="jax"), libraries={**REAL.libraries, "jax": "0.4.30", "jaxlib": "0.4.30"}
    )
    assert _differences(jax)["keras.backend"].severity == Severity.INFO
    bundled = _manifest(custom_objects=[_custom("Scale", "source", imports=["keras"])])
    assert _differences(jax, manifest=bundled)["keras.backend"].severity == Severity.WARN
    with_tf = _manifest(custom_objects=[_custom("TfOp", "source", imports=["tensorflow", "keras"])])
    finding = _differences(jax, manifest=with_tf, policy="lenient")["keras.backend"]
    assert finding.severity == Severity.ERROR
    assert (
        finding.why == "custom code of TfOp imports tensorflow; tf. ops do not run on jax tensors"
    )


def test_a_missing_backend_library_is_an_error() -> None:
    found = _differences(_keras(backend="torch"))
    assert (found["libraries.torch"].severity, found["libraries.torch"].actual) == (
        Severity.ERROR,
        "not installed",
    )


def test_pickles_make_a_python_minor_difference_certain() -> None:
    major, minor, _ = REAL.python.version.split(".")
    current = replace(REAL, python=replace(REAL.python, version=f"{major}.{int(minor) + 1}.0"))
    assert _differences(current)["python.version"].severity == Severity.INFO
    pickled = _manifest(custom_objects=[_custom("Net", "pickle")])
    assert (
        _differences(current, manifest=pickled, policy="lenient")["python.version"].severity
        == Severity.ERROR
    )


def test_distributions_that_custom_objects_import_must_be_installed() -> None:
    objects = [
        _custom("Scale", "distribution", distributions={"absent-layers-pkg": "1.2.0"}),
        _custom("Shift", "distribution", distributions={"numpy": "0.1.0"}),
    ]
    found = _differences(REAL, manifest=_manifest(custom_objects=objects))
    assert found["distributions.absent-layers-pkg"] == Finding(
        location="distributions.absent-layers-pkg",
        problem="not installed",
        severity=Severity.ERROR,
        expected="1.2.0",
        actual="not installed",
        why="custom object(s) Scale import it",
        fix="install absent-layers-pkg==1.2.0",
    )
    assert (
        found["distributions.numpy"].severity == Severity.WARN
    )  # Shift's definition may have changed
    # One line says "not installed" once, not "not installed (found not installed)".
    assert found["distributions.absent-layers-pkg"].describe() == (
        "distributions.absent-layers-pkg: not installed (expected 1.2.0)"
    )


def test_several_tensorflow_distributions_and_a_cpu_build_for_a_cuda_one_are_warnings() -> None:
    assert REAL.tensorflow is not None
    recorded_gpu = replace(
        REAL,
        tensorflow=replace(
            REAL.tensorflow,
            build_info={"is_cuda_build": True, "cuda_version": "12.5.1", "cudnn_version": "9"},
        ),
    )
    both = replace(
        REAL,
        distributions={
            **REAL.distributions,
            "tensorflow": REAL.tensorflow.version,
            "tensorflow-cpu": REAL.tensorflow.version,
        },
    )
    found = {
        f.location: f
        for f in compare_environments(recorded_gpu, both, manifest=_manifest(recorded_gpu))
        if f.severity > Severity.OK
    }
    version = REAL.tensorflow.version
    assert (found["tensorflow.distribution"].severity, found["tensorflow.distribution"].actual) == (
        Severity.WARN,
        f"tensorflow-cpu {version}, tensorflow {version}",
    )
    # Packed where the same two were installed, with the same one's files imported: the same.
    same = compare_environments(both, both, manifest=_manifest(both))
    (finding,) = [f for f in same if f.location == "tensorflow.distribution"]
    assert (finding.severity, finding.problem) == (
        Severity.OK,
        "several TensorFlow distributions are installed, as when packing",
    )
    assert (
        found["tensorflow.build"].expected,
        found["tensorflow.build"].actual,
        found["tensorflow.build"].severity,
    ) == ("CUDA 12.5.1, cuDNN 9", "CPU", Severity.WARN)


def test_overrides_set_the_severity_of_differing_fields_only() -> None:
    current = replace(_keras(floatx="float64"), platform=replace(REAL.platform, machine="aarch64"))
    found = _differences(current, overrides=("keras.floatx=error", "platform.*=ok"))
    assert found["keras.floatx"].severity == Severity.ERROR
    assert (
        found["keras.floatx"].problem == "Keras configuration differs (severity set by --severity)"
    )
    assert "platform.machine" not in found  # set to ok
    same = compare_environments(
        REAL,
        REAL,
        manifest=_manifest(),
        policy=resolve_policy(None, ["keras.version=error"], start=Path("/")),
    )
    assert next(f for f in same if f.location == "keras.version").severity == Severity.OK


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("keras.backed=warn", "--severity: no compatibility field matches 'keras.backed'"),
        (
            "keras.backend=fatal",
            "--severity: severity for 'keras.backend' must be one of ok, info, warn, error: "
            "'fatal'",
        ),
        ("keras.backend", "a severity override must be FIELD=LEVEL: 'keras.backend'"),
    ],
)
def test_bad_overrides_are_usage_errors(item: str, message: str) -> None:
    with pytest.raises(UsageError) as caught:
        resolve_policy(None, [item], start=Path("/"))
    assert caught.value.message == message


def test_pyproject_configuration_is_found_upward_and_the_command_line_wins(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text(
        '[tool.kbundle]\npolicy = "strict"\n'
        '[tool.kbundle.severity]\n"gpus" = "warn"\n"distributions.*" = "info"\n'
    )
    nested = tmp_path / "service" / "deep"
    nested.mkdir(parents=True)
    (tmp_path / "service" / "pyproject.toml").write_text(
        '[project]\nname = "service"\n'
    )  # no [tool.kbundle]: skipped
    policy = resolve_policy(start=nested)
    assert policy == Policy(
        name="strict",
        overrides=(
            ("gpus", Severity.WARN, str(tmp_path / "pyproject.toml")),
            ("distributions.*", Severity.INFO, str(tmp_path / "pyproject.toml")),
        ),
        config=tmp_path / "pyproject.toml",
    )
    chosen = resolve_policy("lenient", ["gpus=ok"], start=nested)
    assert chosen.name == "lenient"
    assert chosen.overrides[-1] == ("gpus", Severity.OK, "--severity")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[tool.kbundle]\npolicy = "strikt"\n',
            "[tool.kbundle] policy must be one of default, strict, lenient: 'strikt'",
        ),
        ('[tool.kbundle]\nfail_on = "warn"\n', "unknown key(s) in [tool.kbundle]: fail_on"),
        (
            '[tool.kbundle.severity]\n"keras.nope" = "warn"\n',
            "no compatibility field matches 'keras.nope'",
        ),
        ("[tool.kbundle\n", "is not valid TOML"),
    ],
)
def test_bad_configuration_is_a_usage_error_naming_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "pyproject.toml").write_text(text)
    with pytest.raises(UsageError) as caught:
        resolve_policy(start=tmp_path)
    assert str(tmp_path / "pyproject.toml") in caught.value.message
    assert message in caught.value.message


def test_raise_for_errors_lists_every_error_once() -> None:
    assert REAL.keras is not None
    current = _keras("2.21.0", distribution="tf-keras", major=2, backend="tensorflow")
    current = replace(current, platform=replace(REAL.platform, machine="riscv64"))
    report = check_manifest(
        _manifest(), policy=resolve_policy("strict", start=Path("/")), current=current
    )
    with pytest.raises(EnvironmentMismatchError) as caught:
        report.raise_for_errors("model.kbundle")
    assert caught.value.message == (
        "this environment cannot load model.kbundle under the strict policy: keras.major: Keras "
        "generation differs "
        "(expected Keras 3 (keras), found Keras 2 (tf-keras)) (and 1 more error)"
    )
    assert [f.location for f in caught.value.findings] == ["keras.major", "platform.machine"]
    assert report.summary() == "incompatible: 2 errors"
