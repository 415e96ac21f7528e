"""Signing: ``kbundle keygen`` and ``kbundle sign`` (docs/signing.md)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from kbundle.cli.app import (
    err,
    handle_errors,
    json_out,
    main,
    out,
)
from kbundle.cli.options import (
    BUNDLE_ARGUMENT,
    digest_line,
    force_bundle_option,
    force_output_option,
    json_option,
    load_signing_key_prompting,
    passphrase_option,
    quiet_option,
    refuse_json_with_stdout,
    storage_option,
    storage_options,
)


@main.command(
    epilog="""\b
Examples:
  kbundle keygen -o release
  kbundle keygen -o release --passphrase-file secret.txt
  KBUNDLE_KEY_PASSPHRASE=... kbundle keygen -o ci/release --force
  cp release.pub ~/.config/kbundle/trusted-keys/
"""
)
@click.option(
    "-o",
    "--output",
    "name",
    type=click.Path(path_type=Path),
    required=True,
    metavar="NAME",
    help="Write NAME.key (private, mode 0600) and NAME.pub (public).",
)
@click.option(
    "--no-passphrase",
    is_flag=True,
    help="Do not ask for a passphrase on a terminal; leave the private key unencrypted.",
)
@passphrase_option
@force_output_option
@quiet_option
@json_option
@handle_errors("as_json")
def keygen(
    name: Path,
    no_passphrase: bool,
    passphrase_file: Path | None,
    force: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Make an Ed25519 key pair for signing bundles; print its fingerprint.

    The private key is encrypted when a passphrase comes from --passphrase-file,
    $KBUNDLE_KEY_PASSPHRASE or the terminal prompt (empty for none). Give NAME.pub to whoever
    verifies your bundles; keep NAME.key secret.
    """
    from kbundle.signing import keys

    passphrase = None if no_passphrase else keys.read_passphrase(passphrase_file)
    if passphrase is None and not no_passphrase and sys.stdin.isatty():
        passphrase = click.prompt(
            "Passphrase for the new key (empty for none)",
            hide_input=True,
            confirmation_prompt=True,
            default="",
            show_default=False,
            err=True,
        ).encode("utf-8")
    generated = keys.generate_key(name, passphrase=passphrase, force=force)
    if as_json:
        json_out(generated.to_dict())
        return
    if not quiet:
        protection = "passphrase-protected" if generated.encrypted else "not encrypted"
        err(
            f"wrote private key {generated.private_path} ({protection}; keep it secret) "
            f"and public key {generated.public_path}"
        )
        err(
            f"trust it where bundles are verified: copy {generated.public_path} "
            f"into {keys.trusted_keys_directory()}, or pass --key {generated.public_path}"
        )
    out(f"{generated.key_id}  {generated.public_path}")


@main.command(
    epilog="""\b
Examples:
  kbundle sign model.kbundle --key release.key
  kbundle sign model.kbundle --key release.key -o signed.kbundle
  kbundle sign model.kbundle --key release.key --passphrase-file secret.txt
  kbundle sign s3://models/prod/model.kbundle --key release.key
  kbundle sign model.kbundle --key release.key -o s3://models/prod/model.kbundle
"""
)
@BUNDLE_ARGUMENT
@click.option(
    "--key",
    "key_path",
    type=click.Path(path_type=Path),
    required=True,
    metavar="KEY",
    help="The private key to sign with (NAME.key from 'kbundle keygen').",
)
@click.option(
    "-o",
    "--output",
    metavar="OUTPUT",
    help="Write the signed bundle here (a file, a URL, or - for standard output) instead of "
    "replacing BUNDLE.",
)
@passphrase_option
@force_bundle_option
@storage_option
@quiet_option
@json_option
@handle_errors("as_json")
def sign(
    bundle: str,
    key_path: Path,
    output: str | None,
    passphrase_file: Path | None,
    force: bool,
    storage_pairs: tuple[str, ...],
    quiet: bool,
    as_json: bool,
) -> None:
    """Sign BUNDLE's manifest (and so everything it lists) with a private key.

    BUNDLE (a file or a URL) is verified first. The digest does not change: the signature is
    stored beside the manifest. Signatures by other keys are kept. BUNDLE is replaced
    atomically (an upload completes only when whole).
    """
    from kbundle.pipelines.sign import sign_bundle

    refuse_json_with_stdout(output, as_json)
    signing_key = load_signing_key_prompting(key_path, passphrase_file)
    result = sign_bundle(
        bundle,
        signing_key,
        output=output,
        force=force,
        storage_options=storage_options(storage_pairs),
    )
    if as_json:
        json_out(result.to_dict())
        return
    if not quiet:
        err(
            f"signed {result.path} with {result.key_id}"
            + ("" if len(result.signers) == 1 else f" ({len(result.signers)} signatures)")
        )
    digest_line(f"{result.digest}  {result.path}", output)
