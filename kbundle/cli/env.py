"""The environment: ``kbundle check``, ``env export`` and ``env create``."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kbundle import errors
from kbundle.cli.app import (
    EXIT_OK,
    err,
    exit_code_for,
    handle_errors,
    json_out,
    main,
    out,
)
from kbundle.cli.options import (
    BUNDLE_ARGUMENT,
    force_output_option,
    json_option,
    policy_options,
    quiet_option,
    shown,
    storage_option,
    storage_options,
    trust_sources_option,
)


@main.command(
    epilog="""\b
Examples:
  kbundle check model.kbundle
  kbundle check model.kbundle --policy strict
  kbundle check model.kbundle --severity keras.backend=warn --severity 'distributions.*=info'
  kbundle check model.kbundle --json | jq '.findings[] | select(.severity != "ok")'
  kbundle check s3://models/prod/model.kbundle
"""
)
@BUNDLE_ARGUMENT
@policy_options
@click.option(
    "--verify",
    "verify_first",
    is_flag=True,
    help="Verify every byte of BUNDLE first (as 'kbundle verify'), so that the verdict is about "
    "an intact bundle; without it only the manifest is read and nothing is verified.",
)
@storage_option
@json_option
@handle_errors("as_json")
def check(
    bundle: str,
    policy: str | None,
    severity: tuple[str, ...],
    verify_first: bool,
    storage_pairs: tuple[str, ...],
    as_json: bool,
) -> None:
    """Can this environment load BUNDLE? Compare the recorded environment field by field.

    Prints a table (field, recorded, current, severity), why each difference matters and
    what to do, then the verdict. Exit 0 when nothing is an error, 3 otherwise. Reads only the
    manifest and installed metadata (imports neither TensorFlow nor Keras nor bundled code),
    so it is no integrity gate: a corrupt bundle gets a verdict too. --verify checks every
    byte first (exit 1 on damage). Of a URL only the first frame (the header) is fetched,
    unless --verify. Rules and policies: docs/compatibility.md; [tool.kbundle] in
    pyproject.toml sets defaults.
    """
    from kbundle.pipelines.check import check as check_bundle

    report = check_bundle(
        bundle,
        policy=policy,
        severity=severity,
        verify=verify_first,
        storage_options=storage_options(storage_pairs),
    )
    if as_json:
        code = EXIT_OK if report.ok else exit_code_for(errors.EnvironmentMismatchError)
        json_out(
            {
                "bundle": shown(bundle),
                **report.to_dict(),
                "verified": verify_first,
                "exit_code": code,
            }
        )
        if code:
            sys.exit(code)
        return
    from kbundle.cli.render import render_compat

    out(render_compat(report, verified=verify_first))
    report.raise_for_errors(shown(bundle), loading=False)


@main.group(
    epilog="""\b
Examples:
  kbundle env export model.kbundle -o requirements.txt
  kbundle env create model.kbundle .venv-model
"""
)
def env() -> None:
    """The environment a bundle was packed in: export its requirements, rebuild it."""


@env.command(
    "export",
    epilog="""\b
Examples:
  kbundle env export model.kbundle
  kbundle env export model.kbundle -o requirements.lock --hashed
  kbundle env export model.kbundle --pins | pip install --no-deps -r /dev/stdin
  kbundle env export model.kbundle --json | jq -r .requirements
  kbundle env export model.kbundle --trust-code   # lets an https --index-url through
""",
)
@BUNDLE_ARGUMENT
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), help="Write to this file instead of stdout."
)
@click.option(
    "--hashed/--pins",
    "hashed",
    default=None,
    help="The hash lock (an error if the bundle has none) or the plain pins. "
    "Default: the lock when there is one.",
)
@trust_sources_option
@storage_option
@force_output_option
@quiet_option
@json_option
@handle_errors("as_json")
def env_export(
    bundle: str,
    output: Path | None,
    hashed: bool | None,
    trust_code: bool,
    storage_pairs: tuple[str, ...],
    force: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Write BUNDLE's pinned requirements (verified first), for pip install --no-deps -r.

    Every line must be a name==version pin (with --hash=sha256 options in a hashed lock),
    a comment or blank; otherwise nothing is written: exit 4 for a pip option, a path or a
    URL (--trust-code lets https indexes and URLs through), exit 1 for any other line.
    """
    from kbundle.pipelines.rebuild import export_requirements

    text, with_hashes = export_requirements(
        bundle,
        hashed=hashed,
        trust_code=trust_code,
        storage_options=storage_options(storage_pairs),
    )
    if output is not None:
        from kbundle.storage.atomic import atomic_file, check_destination

        check_destination(output, force=force, what="requirements file")
        with atomic_file(output, force=force) as handle:
            handle.write(text.encode("utf-8"))
    if as_json:
        json_out(
            {
                "bundle": shown(bundle),
                "output": None if output is None else str(output),
                "hashed": with_hashes,
                "requirements": text,
            }
        )
    elif output is None:
        click.echo(text, nl=False)
    elif not quiet:
        err(f"wrote {output} ({'hash-locked' if with_hashes else 'pins without hashes'})")


@env.command(
    "create",
    epilog="""\b
Examples:
  kbundle env create model.kbundle .venv-model
  kbundle env create model.kbundle /opt/envs/model --python /usr/local/bin/python3.11
  kbundle env create model.kbundle env-dir --kbundle 'kbundle==1.0.0'
  kbundle env create model.kbundle .venv-model --trust-code   # the bundle names an index
""",
)
@BUNDLE_ARGUMENT
@click.argument("directory", type=click.Path(path_type=Path))
@click.option(
    "--python",
    "python",
    metavar="PATH",
    help="Interpreter of the recorded Python minor. Default: this one if it fits, else pythonX.Y.",
)
@click.option(
    "--kbundle",
    "kbundle_spec",
    metavar="SPEC",
    help="What to pip-install as kbundle. Default: this kbundle's checkout, else kbundle==VERSION.",
)
@trust_sources_option
@storage_option
@quiet_option
@json_option
@handle_errors("as_json")
def env_create(
    bundle: str,
    directory: Path,
    python: str | None,
    kbundle_spec: str | None,
    trust_code: bool,
    storage_pairs: tuple[str, ...],
    quiet: bool,
    as_json: bool,
) -> None:
    """Build a virtual environment in DIRECTORY that reproduces BUNDLE's environment.

    Uses the recorded Python minor, installs the pinned requirements with --no-deps (and
    --require-hashes when the bundle is hash-locked), installs kbundle, and finishes by
    running 'kbundle check' inside the new environment, which must come out clean.

    The requirements are checked first, as for 'env export': a line that is not a
    name==version pin is refused before any process starts and DIRECTORY is not made.
    pip and every other child run with python -I in an empty directory.
    """
    from kbundle.pipelines.rebuild import create_environment

    step = None if quiet or as_json else (lambda text: err(f"kbundle: {text}"))
    created = create_environment(
        bundle,
        directory,
        python=python,
        kbundle_spec=kbundle_spec,
        trust_code=trust_code,
        step=step,
        storage_options=storage_options(storage_pairs),
    )
    if as_json:
        json_out(created.to_dict())
        return
    if not quiet:
        install = "hash-checked" if created.hashed else "not hash-checked (no hashed lock)"
        err(
            f"created {created.directory}: Python {created.python}, {install}; "
            "kbundle check inside it is clean"
        )
        if created.backend and created.backend != "tensorflow":
            err(f"set KERAS_BACKEND={created.backend} when using it")
    click.echo(str(created.python_executable))
