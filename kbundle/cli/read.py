"""Reading bundles: ``kbundle verify``, ``inspect``, ``show-code`` and ``unpack``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from kbundle.cli.app import (
    err,
    handle_errors,
    json_out,
    main,
    out,
    print_environment_concerns,
    progress_bar,
)
from kbundle.cli.options import (
    BUNDLE_ARGUMENT,
    environment_gate_options,
    expect_option,
    force_option,
    json_option,
    policy_options,
    quiet_option,
    shown,
    storage_option,
    storage_options,
    trust_options,
    trusted_key_paths,
    trusted_keys_options,
)
from kbundle.cli.render import plural, size_text
from kbundle.findings import Finding, Severity


@main.command(
    epilog="""\b
Examples:
  kbundle verify model.kbundle
  kbundle verify model.kbundle --expect sha256:3f2a... || exit 1
  kbundle verify model.kbundle --expect sha256:3f2a... --key release.pub
  kbundle verify model.kbundle --require-signature --json
  kbundle verify s3://models/prod/model.kbundle --expect sha256:3f2a...
  kbundle verify https://example.com/model.kbundle
  curl -s https://example.com/model.kbundle | kbundle verify -
"""
)
@BUNDLE_ARGUMENT
@expect_option
@trusted_keys_options
@storage_option
@quiet_option
@json_option
@handle_errors("as_json")
def verify(
    bundle: str,
    expect: str | None,
    trusted_keys: tuple[Path, ...],
    require_signature: bool,
    storage_pairs: tuple[str, ...],
    quiet: bool,
    as_json: bool,
) -> None:
    """Check every member of BUNDLE: size, SHA-256, names, kinds, nothing extra or missing.

    BUNDLE is a file, a URL (s3://, gs://, https://, any fsspec filesystem; streamed once,
    never stored) or - for standard input. A signature, when present, must verify; a bad one
    is an integrity failure. Signers are trusted when their public key is given with --key or
    lies in the trusted keys directory ($KBUNDLE_TRUSTED_KEYS, default
    ~/.config/kbundle/trusted-keys). Reports every problem at once. Never imports TensorFlow
    or Keras.
    """
    from kbundle.pipelines.verify import verify as verify_bundle

    with progress_bar("verifying", not quiet and not as_json) as display:
        report = verify_bundle(
            bundle,
            expect=expect,
            trusted_keys=trusted_key_paths(trusted_keys),
            require_signature=require_signature,
            progress=display.bytes,
            storage_options=storage_options(storage_pairs),
        )
    signed = report.head.signature is not None
    assert report.signature is not None  # verify always checks signatures
    if as_json:
        json_out(report.to_dict())
        return
    if not quiet:
        note = (
            f" ({report.signature.describe()})"
            if not signed
            else f"; {report.signature.describe()}"
        )
        err(
            f"OK: {plural(report.files_checked, 'file')}, "
            f"{size_text(report.bytes_checked)} verified{note}"
        )
    out(f"{report.head.digest}  {shown(bundle)}")


@main.command(
    epilog="""\b
Examples:
  kbundle inspect model.kbundle
  kbundle inspect model.kbundle --json | jq .manifest.environment.keras
  kbundle inspect s3://models/prod/model.kbundle --storage-option profile=prod
"""
)
@BUNDLE_ARGUMENT
@storage_option
@json_option
@handle_errors("as_json")
def inspect(bundle: str, storage_pairs: tuple[str, ...], as_json: bool) -> None:
    """Summarise BUNDLE's manifest. Reads only the manifest; runs and imports nothing.

    BUNDLE is a file, a URL (of which only the first frame, the header, is fetched, by range
    requests) or - for standard input.
    """
    from kbundle.pipelines.verify import inspect as inspect_bundle

    head = inspect_bundle(bundle, storage_options=storage_options(storage_pairs))
    if as_json:
        json_out(head.to_dict())
        return
    from kbundle.cli.render import render_manifest

    out(render_manifest(head))


@main.command(
    "show-code",
    epilog="""\b
Examples:
  kbundle show-code model.kbundle
  kbundle show-code model.kbundle MyCustomLayer
  kbundle show-code model.kbundle 'acme>Scale' --json | jq -r '.objects[0].files[0].text'
  kbundle show-code s3://models/prod/model.kbundle
""",
)
@BUNDLE_ARGUMENT
@click.argument("name", required=False)
@storage_option
@json_option
@handle_errors("as_json")
def show_code(bundle: str, name: str | None, storage_pairs: tuple[str, ...], as_json: bool) -> None:
    """Print the code BUNDLE carries for its custom objects (or for NAME only), for review.

    Verifies the bundle first. Never imports, runs or unpickles anything, and never loads
    Keras or TensorFlow. A pickled object is shown by the definition text captured when it
    was packed; the pickle itself is what would run.
    """
    from kbundle.pipelines.review import show_code as bundled_code

    listings = bundled_code(bundle, name, storage_options=storage_options(storage_pairs))
    if not listings and not as_json:
        err(f"{shown(bundle)} carries no custom-object code: nothing would run when it is loaded")
    if as_json:
        json_out({"ok": True, "objects": [listing.to_dict() for listing in listings]})
        return
    from kbundle.cli.render import render_listings

    out(render_listings(listings), nl=False)


@main.command(
    epilog="""\b
Examples:
  kbundle unpack model.kbundle -d served-model
  kbundle unpack model.kbundle -d served-model --no-load --force
  kbundle unpack model.kbundle -d out --expect sha256:3f2a... --trust-code
  kbundle unpack model.kbundle -d out --key release.pub
  kbundle unpack model.kbundle -d out --policy strict
  kbundle unpack model.kbundle -d out --severity keras.backend=warn --ignore-env
  kbundle unpack s3://models/prod/model.kbundle -d served-model --expect sha256:3f2a...
  curl -s https://example.com/model.kbundle | kbundle unpack - -d served-model
"""
)
@BUNDLE_ARGUMENT
@click.option(
    "-d",
    "--dest",
    "destination",
    type=click.Path(path_type=Path),
    required=True,
    help="Directory to create with the verified files.",
)
@click.option(
    "--no-load", is_flag=True, help="Only verify and extract; do not prove the model loads."
)
@expect_option
@trust_options
@trusted_keys_options
@environment_gate_options
@policy_options
@force_option(
    "Replace DEST when it is a previous unpack's output, unchanged: a directory holding nothing "
    "but what its kbundle.json lists. Never a symbolic link, the current directory or one "
    "holding it, nor a directory holding BUNDLE or anything else."
)
@storage_option
@quiet_option
@json_option
@handle_errors("as_json")
def unpack(
    bundle: str,
    destination: Path,
    no_load: bool,
    expect: str | None,
    trust_code: bool,
    allow_distributions: tuple[str, ...],
    unsafe_lambda: bool,
    trusted_keys: tuple[Path, ...],
    require_signature: bool,
    ignore_env: bool,
    no_probe: bool,
    policy: str | None,
    severity: tuple[str, ...],
    force: bool,
    storage_pairs: tuple[str, ...],
    quiet: bool,
    as_json: bool,
) -> None:
    """Verify BUNDLE while extracting it into DEST, then prove the model loads.

    BUNDLE is a file, a URL (streamed once: what is extracted is what was verified) or - for
    standard input. DEST appears only when every member verified; it holds the payload and
    kbundle.json, the manifest, which lists all of it and marks DEST as an unpack's output:
    --force replaces only such a directory, and only while it holds nothing else. Before
    loading, the recorded environment is checked (as 'kbundle check' does): errors refuse
    with exit 3 unless --ignore-env, warnings are shown. After loading, the stored probe
    input is run again and the outputs compared. With --no-load nothing runs here, so
    differences are shown but refuse nothing.
    """
    from kbundle.env.rules import resolve_policy
    from kbundle.pipelines.load import LoadOptions
    from kbundle.pipelines.load import unpack as unpack_bundle

    options = LoadOptions(
        trust_code=trust_code,
        allow_distributions=allow_distributions,
        safe_mode=not unsafe_lambda,
        ignore_env=ignore_env,
        env_policy=resolve_policy(policy, severity),
        probe=not no_probe,
    )
    with progress_bar("verifying and extracting", not quiet and not as_json) as display:
        result = unpack_bundle(
            bundle,
            destination,
            force=force,
            expect=expect,
            load_model=not no_load,
            options=options,
            trusted_keys=trusted_key_paths(trusted_keys),
            require_signature=require_signature,
            progress=display.bytes,
            phase=display.phase,
            storage_options=storage_options(storage_pairs),
        )
    loaded: dict[str, Any] | None = None
    if result.model is not None:
        from kbundle.models import keras_io

        loaded = keras_io.describe_live_model(result.model)
    if as_json:
        json_out(result.to_dict())
        return
    if no_load:
        _print_unloaded_differences(result.environment, shown(bundle))
    else:
        print_environment_concerns(result.environment)
    if not quiet:
        signed = f" ({result.report.signature.describe()})" if result.report.signature else ""
        err(f"verified {plural(result.report.files_checked, 'file')} into {result.path}{signed}")
        if loaded is not None:
            err(
                f"model loads: {loaded['class_name']} {loaded['name']!r}, "
                f"{loaded['parameter_count']} parameters"
            )
        for finding in result.environment:
            if finding.location == "probe" and finding.severity == Severity.OK:
                err(f"probe: {finding.problem} ({finding.actual}; {finding.expected})")
    out(str(result.model_path))


def _print_unloaded_differences(findings: list[Finding], bundle: str) -> None:
    """With --no-load nothing was refused or ignored: one line says what a load would meet."""
    errors = [f.location for f in findings if f.severity == Severity.ERROR]
    warnings = [f.location for f in findings if f.severity == Severity.WARN]
    if not errors and not warnings:
        return
    parts = []
    if errors:
        parts.append(f"{plural(len(errors), 'error')} ({', '.join(errors)}) would refuse a load")
    if warnings:
        parts.append(f"{plural(len(warnings), 'warning')} ({', '.join(warnings)})")
    err(
        "kbundle: note: not loaded (--no-load); this environment differs from the recorded one: "
        f"{', '.join(parts)}; 'kbundle check {bundle}' explains each"
    )
