"""Command-line options defined once, and reused by every command that takes them.

Stable: the option names and meanings are public.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from kbundle.cli.app import F

# --------------------------------------------------------------------------------------------
# Options defined once


def json_option(command: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print a JSON result on stdout.")(
        command
    )


def policy_options(command: F) -> F:
    command = click.option(
        "--severity",
        "severity",
        multiple=True,
        metavar="FIELD=LEVEL",
        help="Set the severity (ok, info, warn, error) of a differing field, e.g. "
        "keras.backend=warn (repeatable; FIELD may use * as in 'distributions.*'). "
        "Overrides [tool.kbundle.severity].",
    )(command)
    return click.option(
        "--policy",
        type=click.Choice(["default", "strict", "lenient"]),
        default=None,
        help="How strictly environment differences count: strict makes every version difference "
        "an error, lenient only what will certainly fail. Default: [tool.kbundle] policy, else "
        "default.",
    )(command)


def environment_gate_options(command: F) -> F:
    command = click.option(
        "--no-probe", is_flag=True, help="Do not re-run the stored probe input to compare outputs."
    )(command)
    return click.option(
        "--ignore-env",
        is_flag=True,
        help="Load even when the environment check finds errors (they are still shown).",
    )(command)


def quiet_option(command: F) -> F:
    return click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")(
        command
    )


def force_option(help_text: str) -> Callable[[F], F]:
    def decorate(command: F) -> F:
        return click.option("--force", is_flag=True, help=help_text)(command)

    return decorate


force_output_option = force_option("Replace an existing output.")
# What --force may replace where it writes a bundle (kbundle.storage.atomic.check_destination).
force_bundle_option = force_option(
    "Replace an existing bundle at OUTPUT. Only a file that starts like a bundle (the zstd "
    "magic) is replaced, never the input."
)


def expect_option(command: F) -> F:
    return click.option(
        "--expect",
        metavar="sha256:HEX",
        help="Fail unless the bundle digest (printed by pack) is exactly this.",
    )(command)


def trust_options(command: F) -> F:
    command = click.option(
        "--unsafe-lambda",
        is_flag=True,
        help="Load Lambda layers and other marshalled code (Keras safe_mode=False).",
    )(command)
    command = click.option(
        "--allow-distribution",
        "allow_distributions",
        multiple=True,
        metavar="NAME",
        help="Let the load import modules of this installed distribution to find custom "
        "objects (repeatable; also allow-distributions in [tool.kbundle]). Without it only "
        "Keras's own packages are imported.",
    )(command)
    return click.option(
        "--trust-code",
        is_flag=True,
        help="Trust the bundle: let its custom-object code and a SavedModel's graph run, and "
        "its custom objects import what they name (review them with show-code first).",
    )(command)


def trust_sources_option(command: F) -> F:
    return click.option(
        "--trust-code",
        is_flag=True,
        help="Let the requirements name an https --index-url, --extra-index-url, --find-links "
        "or 'name @ https://...' URL. Never a local path, file: URL or other pip option.",
    )(command)


def trusted_keys_options(command: F) -> F:
    command = click.option(
        "--require-signature",
        is_flag=True,
        help="Fail unless the bundle is signed by a trusted key.",
    )(command)
    return click.option(
        "--key",
        "trusted_keys",
        multiple=True,
        type=click.Path(path_type=Path),
        metavar="PUB",
        help="Trust this public key (repeatable) instead of the trusted keys directory, and "
        "require a signature by one of them.",
    )(command)


def passphrase_option(command: F) -> F:
    return click.option(
        "--passphrase-file",
        type=click.Path(path_type=Path),
        metavar="FILE",
        help="Read the private key's passphrase from FILE's first line "
        "(else $KBUNDLE_KEY_PASSPHRASE, else a prompt on a terminal).",
    )(command)


def load_signing_key_prompting(path: Path, passphrase_file: Path | None) -> Any:
    """The private key at ``path``, asking for its passphrase on a terminal if need be."""
    from kbundle.signing import keys

    passphrase = keys.read_passphrase(passphrase_file)
    if passphrase is None and keys.is_encrypted_key(path) and sys.stdin.isatty():
        passphrase = click.prompt(f"Passphrase for {path}", hide_input=True, err=True).encode(
            "utf-8"
        )
    return keys.load_signing_key(path, passphrase=passphrase)


def trusted_key_paths(trusted_keys: tuple[Path, ...]) -> list[Path] | None:
    """``--key`` values as the library takes them: None (no --key) means the directory."""
    return list(trusted_keys) or None


# A bundle argument is a path, "-" or a URL: kept as text for kbundle.storage.locations, which
# decides (click.Path would turn "s3://b/m.kbundle" into the path "s3:/b/m.kbundle").
BUNDLE_ARGUMENT = click.argument("bundle", metavar="BUNDLE")


def storage_option(command: F) -> F:
    return click.option(
        "--storage-option",
        "storage_pairs",
        multiple=True,
        metavar="KEY=VALUE",
        help="An option for a URL's filesystem (fsspec, s3fs, gcsfs), e.g. "
        "endpoint_url=http://127.0.0.1:9000, profile=prod, anon=true (repeatable; VALUE is "
        "read as JSON when it is JSON). Credentials otherwise come from the filesystem's usual "
        "sources: the environment, profiles. Never printed.",
    )(command)


def storage_options(pairs: tuple[str, ...]) -> dict[str, Any]:
    """``--storage-option`` values as the library's ``storage_options``."""
    from kbundle.storage.locations import parse_storage_options

    return parse_storage_options(pairs)


def shown(bundle: str) -> str:
    """How output names a bundle argument: a URL without its credentials."""
    from kbundle.storage.locations import parse_location

    return parse_location(bundle).display


def refuse_json_with_stdout(output: str | None, as_json: bool) -> None:
    """``--json`` prints on standard output, which ``-o -`` gives to the bundle."""
    if as_json and output == "-":
        from kbundle.errors import UsageError

        raise UsageError(
            "--json prints on standard output, which carries the bundle with -o -",
            hint="drop --json, or write the bundle to a file or a URL",
        )


def digest_line(text: str, output: str | None) -> None:
    """The ``DIGEST  WHERE`` line a command that wrote a bundle ends with: on standard
    output, or on standard error when standard output carries the bundle (``-o -``)."""
    from kbundle.cli.app import err, out

    if output == "-":
        err(text)
    else:
        out(text)
