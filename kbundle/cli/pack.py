"""``kbundle pack``: a model in, one bundle out."""

from __future__ import annotations

from pathlib import Path

import click

from kbundle.cli.app import (
    err,
    handle_errors,
    json_out,
    main,
    progress_bar,
)
from kbundle.cli.options import (
    digest_line,
    force_bundle_option,
    json_option,
    load_signing_key_prompting,
    passphrase_option,
    quiet_option,
    refuse_json_with_stdout,
    storage_option,
    storage_options,
)
from kbundle.cli.render import size_text
from kbundle.container.writer import DEFAULT_LEVEL
from kbundle.errors import UsageError


def _labels(values: tuple[str, ...]) -> dict[str, str]:
    """``--label KEY=VALUE`` options as a mapping (a later KEY wins)."""
    labels = {}
    for value in values:
        key, sep, text = value.partition("=")
        if not sep:
            raise UsageError(f"--label must be KEY=VALUE: {value!r}", hint="write --label team=nlp")
        labels[key] = text
    return labels


@main.command(
    epilog="""\b
Examples:
  kbundle pack model.keras -o model.kbundle
  kbundle pack model.keras -o model.kbundle --custom-objects mypkg.layers
  kbundle pack model.keras -o model.kbundle --level 19 --force
  kbundle pack big.keras -o big.kbundle --level none --quiet --no-probe
  kbundle pack model.keras -o model.kbundle --sign release.key
  kbundle pack model.keras -o model.kbundle --lock
  kbundle pack model.keras -o model.kbundle --asset tokenizer.json --asset vocab/
  kbundle pack model.keras -o model.kbundle --label team=nlp --label dataset=v3
  kbundle pack model.keras -o s3://models/prod/model.kbundle
  kbundle pack model.keras -o s3://models/m.kbundle --storage-option endpoint_url=http://minio:9000
  kbundle pack model.keras -o - | ssh host 'cat > model.kbundle'
"""
)
@click.argument("model", type=click.Path(path_type=Path))
@click.option(
    "--custom-objects",
    "custom_modules",
    multiple=True,
    metavar="MODULE",
    help="Import MODULE (from the current directory or PYTHONPATH) "
    "to find the model's custom objects; repeatable.",
)
@click.option(
    "--no-project-imports",
    is_flag=True,
    help="Do not import the modules the model's config names from your project (the current "
    "directory or PYTHONPATH); by default they are imported so that their registrations run.",
)
@click.option(
    "-o",
    "--output",
    required=True,
    metavar="OUTPUT",
    help="The bundle to write: NAME.kbundle, a URL (s3://, gs://, any fsspec filesystem), or "
    "- for standard output.",
)
@click.option(
    "--level",
    default=str(DEFAULT_LEVEL),
    show_default=True,
    metavar="1..22|none",
    help="zstd compression level, or 'none' to store.",
)
@click.option(
    "--threads",
    default=-1,
    show_default=True,
    type=int,
    help="zstd worker threads (-1: one per CPU, 0: no workers).",
)
@click.option(
    "--sign",
    "sign_key",
    type=click.Path(path_type=Path),
    metavar="KEY",
    help="Sign the bundle with this private key (from 'kbundle keygen').",
)
@passphrase_option
@click.option(
    "--probe/--no-probe",
    default=None,
    help="Store a deterministic input and the model's output, re-checked at load (default: "
    "whenever the input signature is known; loads a model file with Keras, which imports "
    "TensorFlow).",
)
@click.option(
    "--lock",
    is_flag=True,
    help="Hash-lock the pinned requirements with pip-tools (asks the package index; slow).",
)
@click.option(
    "--asset",
    "assets",
    multiple=True,
    type=click.Path(path_type=Path),
    metavar="PATH",
    help="Carry this file or directory in the bundle as assets/NAME, verified like every "
    "member (repeatable); kbundle.open gives its path after a load.",
)
@click.option(
    "--label",
    "labels",
    multiple=True,
    metavar="KEY=VALUE",
    help="Record a label in the manifest's metadata (repeatable).",
)
@click.option(
    "--no-provenance",
    is_flag=True,
    help="Do not record the git commit, whether tracked files changed, and the command line.",
)
@click.option(
    "--record-hostname", is_flag=True, help="Record this machine's host name in the provenance."
)
@force_bundle_option
@storage_option
@quiet_option
@json_option
@handle_errors("as_json")
def pack(
    model: Path,
    custom_modules: tuple[str, ...],
    no_project_imports: bool,
    output: str,
    level: str,
    threads: int,
    sign_key: Path | None,
    passphrase_file: Path | None,
    probe: bool | None,
    lock: bool,
    assets: tuple[Path, ...],
    labels: tuple[str, ...],
    no_provenance: bool,
    record_hostname: bool,
    force: bool,
    storage_pairs: tuple[str, ...],
    quiet: bool,
    as_json: bool,
) -> None:
    """Pack MODEL (.keras, .h5 or SavedModel directory) into one verified bundle.

    Prints the bundle digest (sha256 of its manifest); pin it in deploy scripts with
    'kbundle verify --expect'. Nothing is written unless pack succeeds: an s3:// bundle is
    uploaded while it is packed (no local copy) and appears only when complete; a failed or
    interrupted pack aborts the upload. With -o - the bundle goes to standard output (the
    digest line to standard error), after a first pass that hashes the model.
    """
    from kbundle.pipelines.pack import pack as pack_model
    from kbundle.storage.locations import Location, parse_location
    from kbundle.storage.outputs import check_output

    refuse_json_with_stdout(output, as_json)
    options = storage_options(storage_pairs)
    signing_key = None
    if sign_key:
        # Before the passphrase prompt: an output pack would refuse is refused first (pack
        # checks it again itself, before any work).
        target = parse_location(output, options)
        check_output(target, force=force, inputs=(Location(path=model),))
        signing_key = load_signing_key_prompting(sign_key, passphrase_file)
    with progress_bar("packing", not quiet) as display:
        result = pack_model(
            model,
            output,
            force=force,
            level=level,
            threads=threads,
            progress=display.bytes,
            phase=display.phase,
            signing_key=signing_key,
            probe=probe,
            lock=lock,
            custom_modules=custom_modules,
            project_imports=not no_project_imports,
            assets=assets,
            labels=_labels(labels),
            provenance=not no_provenance,
            record_hostname=record_hostname,
            storage_options=options,
        )
    if as_json:
        json_out(result.to_dict())
        return
    for note in result.notes:
        err(f"kbundle: note: {note}")
    if not quiet:
        err(
            f"packed {model} ({result.manifest.model.format}) into {result.path}: "
            f"{size_text(result.size)}, payload {size_text(result.manifest.payload_size)}"
        )
        if signing_key:
            err(f"signed by {signing_key.key_id}")
    digest_line(f"{result.digest}  {result.path}", output)
