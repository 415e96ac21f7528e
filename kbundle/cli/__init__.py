"""The ``kbundle`` command line: the only place that prints or exits.

Commands compose the public functions, render their results (text or ``--json``), and map
errors to exit codes through ``EXIT_CODES``, the one table of them. Bad input never shows a
traceback: it shows one line saying what failed and what fixes it (``KBUNDLE_DEBUG=1`` adds
the traceback for bug reports). Stable: commands, options and exit codes are public.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from kbundle import errors
from kbundle._version import __version__
from kbundle.container.archive import DEFAULT_LEVEL
from kbundle.findings import Finding, Severity

__all__ = ["EXIT_CODES", "main"]

# The one table of exit codes (also in docs/cli.md). First match wins, so subclasses first.
EXIT_CODES: tuple[tuple[type[BaseException], int, str], ...] = (
    (errors.IntegrityError, 1, "integrity failure: corrupt, truncated, tampered or unsafe bundle"),
    (errors.UsageError, 2, "usage error or unreadable input"),
    (errors.NotABundleError, 2, "usage error or unreadable input"),
    (errors.UnsupportedFormatVersionError, 2, "usage error or unreadable input"),
    (errors.OutputExistsError, 2, "usage error or unreadable input"),
    (errors.PackError, 2, "usage error or unreadable input"),
    (errors.EnvironmentMismatchError, 3, "environment incompatible"),
    (errors.UntrustedCodeError, 4, "untrusted code refused"),
    (errors.ModelLoadError, 5, "the model failed to load after verification"),
)
EXIT_OK = 0
EXIT_INTERRUPTED = 130  # the shell convention for SIGINT
EXIT_INTERNAL = 70  # EX_SOFTWARE: a bug in kbundle, not the user's input
EXIT_OS_ERROR = 2  # the system refused a read or write: unreadable input or unwritable output

F = TypeVar("F", bound=Callable[..., Any])


def exit_code_for(error: BaseException | type[BaseException]) -> int:
    """The exit code for an error, given as an instance or as its class."""
    kind = error if isinstance(error, type) else type(error)
    for base, code, _ in EXIT_CODES:
        if issubclass(kind, base):
            return code
    return EXIT_INTERNAL


# --------------------------------------------------------------------------------------------
# Output helpers


# Human text leaves the CLI only through _err and _out, which escape every character that is
# not printable (kbundle.cli.render.printable): names, manifest strings, messages quoting a bundle
# and code under review must never move a terminal's cursor, erase a line or reorder text.


def _err(text: str) -> None:
    """One line on stderr: a newline inside it (from a bundle's value) is shown escaped."""
    from kbundle.cli.render import printable

    click.echo(printable(text, keep_newlines=False), err=True)


def _out(text: str, *, nl: bool = True) -> None:
    """Human text on stdout, lines and tabs kept (the renderers escaped each value already)."""
    from kbundle.cli.render import printable

    click.echo(printable(text, keep_newlines=True, keep_tabs=True), nl=nl)


def _print_findings(findings: tuple[Finding, ...] | list[Finding]) -> None:
    for finding in findings:
        _err(f"  - {finding.describe()}")


def _print_environment_concerns(findings: list[Finding] | tuple[Finding, ...]) -> None:
    """Warnings (and errors let through by --ignore-env), once each, one line each."""
    for finding in findings:
        if finding.severity >= Severity.WARN:
            label = "warning" if finding.severity == Severity.WARN else "ignored error"
            _err(f"kbundle: {label}: environment {finding.describe()}")


def _json_out(data: Any) -> None:
    # ASCII only: json.dumps escapes C0 controls but would pass C1 controls (CSI U+009B), bidi
    # overrides and lone surrogates through raw, so a consumer printing the text (or jq without
    # -r) could still meet them. Every parser restores the exact strings from \u escapes.
    click.echo(json.dumps(data, indent=2, ensure_ascii=True))


@contextmanager
def _progress(label: str, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr when it is a terminal and not --quiet; else nothing."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


def _handle_errors(json_flag: str | None = None) -> Callable[[F], F]:
    """Run a command; turn kbundle errors into one line (or JSON) and the right exit code."""

    def decorate(command: F) -> F:
        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            as_json = bool(json_flag and kwargs.get(json_flag))
            try:
                return command(*args, **kwargs)
            except errors.KbundleError as exc:
                code = exit_code_for(exc)
                if as_json:
                    _json_out(
                        {
                            "ok": False,
                            "exit_code": code,
                            "error": exc.message,
                            "hint": exc.hint,
                            "findings": [f.to_dict() for f in exc.findings],
                        }
                    )
                else:
                    _err(f"kbundle: error: {exc}")
                    if len(exc.findings) > 1:
                        _err(f"all {len(exc.findings)} problems:")
                        _print_findings(exc.findings)
                if os.environ.get("KBUNDLE_DEBUG"):
                    traceback.print_exc()
                sys.exit(code)
            except OSError as exc:
                # The machine's problem, not kbundle's: a read or write the system refused.
                where = f": {exc.filename}" if exc.filename else ""
                _err(
                    f"kbundle: error: {exc.strerror or exc}{where}; check the path and permissions"
                )
                sys.exit(EXIT_OS_ERROR)
            except KeyboardInterrupt:
                _err("kbundle: interrupted; no partial output was left behind")
                sys.exit(EXIT_INTERRUPTED)
            except Exception as exc:
                _err(
                    f"kbundle: internal error: {type(exc).__name__}: {exc}; this is a bug in "
                    "kbundle, please report it (KBUNDLE_DEBUG=1 shows the traceback)"
                )
                if os.environ.get("KBUNDLE_DEBUG"):
                    traceback.print_exc()
                sys.exit(EXIT_INTERNAL)

        return wrapper  # type: ignore[return-value]

    return decorate


# --------------------------------------------------------------------------------------------
# Options defined once


def _option_json(command: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Print a JSON result on stdout.")(
        command
    )


def _option_policy(command: F) -> F:
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


def _option_environment_gate(command: F) -> F:
    command = click.option(
        "--no-probe", is_flag=True, help="Do not re-run the stored probe input to compare outputs."
    )(command)
    return click.option(
        "--ignore-env",
        is_flag=True,
        help="Load even when the environment check finds errors (they are still shown).",
    )(command)


def _option_quiet(command: F) -> F:
    return click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")(
        command
    )


def _force_option(help_text: str) -> Callable[[F], F]:
    def decorate(command: F) -> F:
        return click.option("--force", is_flag=True, help=help_text)(command)

    return decorate


_option_force = _force_option("Replace an existing output.")
# What --force may replace where it writes a bundle (kbundle.storage.atomic.check_destination).
_option_force_bundle = _force_option(
    "Replace an existing bundle at OUTPUT. Only a file that starts like a bundle (the zstd "
    "magic) is replaced, never the input."
)


def _option_expect(command: F) -> F:
    return click.option(
        "--expect",
        metavar="sha256:HEX",
        help="Fail unless the bundle digest (printed by pack) is exactly this.",
    )(command)


def _option_trust(command: F) -> F:
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


def _option_trust_sources(command: F) -> F:
    return click.option(
        "--trust-code",
        is_flag=True,
        help="Let the requirements name an https --index-url, --extra-index-url, --find-links "
        "or 'name @ https://...' URL. Never a local path, file: URL or other pip option.",
    )(command)


def _option_trusted_keys(command: F) -> F:
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


def _option_passphrase(command: F) -> F:
    return click.option(
        "--passphrase-file",
        type=click.Path(path_type=Path),
        metavar="FILE",
        help="Read the private key's passphrase from FILE's first line "
        "(else $KBUNDLE_KEY_PASSPHRASE, else a prompt on a terminal).",
    )(command)


def _load_signing_key(path: Path, passphrase_file: Path | None) -> Any:
    """The private key at ``path``, asking for its passphrase on a terminal if need be."""
    from kbundle.signing import keys

    passphrase = keys.read_passphrase(passphrase_file)
    if passphrase is None and keys.is_encrypted_key(path) and sys.stdin.isatty():
        passphrase = click.prompt(f"Passphrase for {path}", hide_input=True, err=True).encode(
            "utf-8"
        )
    return keys.load_signing_key(path, passphrase=passphrase)


def _trusted(trusted_keys: tuple[Path, ...]) -> list[Path] | None:
    """``--key`` values as the library takes them: None (no --key) means the directory."""
    return list(trusted_keys) or None


_BUNDLE = click.argument("bundle", type=click.Path(path_type=Path, dir_okay=True))


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def _size(count: int) -> str:
    value = float(count)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{count} B"


# --------------------------------------------------------------------------------------------
# Commands


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""Exit codes: 0 ok; 1 integrity failure; 2 usage error or unreadable input;
3 environment incompatible; 4 untrusted code refused; 5 model failed to load;
70 internal error (a bug); 130 interrupted.

\b
Examples:
  kbundle pack model.keras -o model.kbundle
  kbundle verify model.kbundle --expect sha256:3f2a...
  kbundle unpack model.kbundle -d served-model
""",
)
@click.version_option(__version__, prog_name="kbundle")
def main() -> None:
    """Pack Keras/TensorFlow models into verified, self-describing bundles, and load them back."""
    from kbundle.cli.process import quiet_blas_threads, retain_freed_memory
    from kbundle.models import keras_io

    keras_io.filter_native_logs = True
    # Warnings are human text too: kbundle's as warning lines (a loaded bundle's code
    # conflicts), every one escaped.
    warnings.showwarning = _show_warning
    retain_freed_memory()
    quiet_blas_threads()


@main.command(
    epilog="""\b
Examples:
  kbundle pack model.keras -o model.kbundle
  kbundle pack model.keras -o model.kbundle --custom-objects mypkg.layers
  kbundle pack model.keras -o model.kbundle --level 19 --force
  kbundle pack big.keras -o big.kbundle --level none --quiet --no-probe
  kbundle pack model.keras -o model.kbundle --sign release.key
  kbundle pack model.keras -o model.kbundle --lock
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
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="The bundle to write (NAME.kbundle).",
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
@_option_passphrase
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
@_option_force_bundle
@_option_quiet
@_option_json
@_handle_errors("as_json")
def pack(
    model: Path,
    custom_modules: tuple[str, ...],
    output: Path,
    level: str,
    threads: int,
    sign_key: Path | None,
    passphrase_file: Path | None,
    probe: bool | None,
    lock: bool,
    force: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Pack MODEL (.keras, .h5 or SavedModel directory) into one verified bundle.

    Prints the bundle digest (sha256 of its manifest); pin it in deploy scripts with
    'kbundle verify --expect'. Nothing is written unless pack succeeds.
    """
    from kbundle.pipelines.pack import pack as pack_model
    from kbundle.storage.atomic import check_destination

    check_destination(output, force=force, what="bundle", inputs=(model,))
    signing_key = _load_signing_key(sign_key, passphrase_file) if sign_key else None
    with _progress("packing", not quiet) as progress:
        result = pack_model(
            model,
            output,
            force=force,
            level=level,
            threads=threads,
            progress=progress,
            signing_key=signing_key,
            probe=probe,
            lock=lock,
            custom_modules=custom_modules,
        )
    signers = [signing_key.key_id] if signing_key else []
    if as_json:
        _json_out(
            {
                "ok": True,
                "bundle": str(result.path),
                "digest": result.digest,
                "size": result.size,
                "model_format": result.manifest.model.format,
                "signers": signers,
                "notes": list(result.notes),
            }
        )
        return
    for note in result.notes:
        _err(f"kbundle: note: {note}")
    if not quiet:
        _err(
            f"packed {model} ({result.manifest.model.format}) into {result.path}: "
            f"{_size(result.size)}, payload {_size(result.manifest.payload_size)}"
        )
        if signing_key:
            _err(f"signed by {signing_key.key_id}")
    _out(f"{result.digest}  {result.path}")


@main.command(
    epilog="""\b
Examples:
  kbundle verify model.kbundle
  kbundle verify model.kbundle --expect sha256:3f2a... || exit 1
  kbundle verify model.kbundle --expect sha256:3f2a... --key release.pub
  kbundle verify model.kbundle --require-signature --json
"""
)
@_BUNDLE
@_option_expect
@_option_trusted_keys
@_option_quiet
@_option_json
@_handle_errors("as_json")
def verify(
    bundle: Path,
    expect: str | None,
    trusted_keys: tuple[Path, ...],
    require_signature: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Check every member of BUNDLE: size, SHA-256, names, kinds, nothing extra or missing.

    A signature, when present, must verify; a bad one is an integrity failure. Signers are
    trusted when their public key is given with --key or lies in the trusted keys directory
    ($KBUNDLE_TRUSTED_KEYS, default ~/.config/kbundle/trusted-keys). Reports every problem at
    once. Never imports TensorFlow or Keras.
    """
    from kbundle.pipelines.read import verify as verify_bundle

    with _progress("verifying", not quiet and not as_json) as progress:
        report = verify_bundle(
            bundle,
            expect=expect,
            trusted_keys=_trusted(trusted_keys),
            require_signature=require_signature,
            progress=progress,
        )
    signed = report.head.signature is not None
    assert report.signature is not None  # verify always checks signatures
    if as_json:
        _json_out(
            {
                "ok": True,
                "digest": report.head.digest,
                "files": report.files_checked,
                "bytes": report.bytes_checked,
                "signed": signed,
                "signature": report.signature.to_dict(),
                "findings": [],
            }
        )
        return
    if not quiet:
        note = (
            f" ({report.signature.describe()})"
            if not signed
            else f"; {report.signature.describe()}"
        )
        _err(
            f"OK: {_count(report.files_checked, 'file')}, "
            f"{_size(report.bytes_checked)} verified{note}"
        )
    _out(f"{report.head.digest}  {bundle}")


@main.command(
    epilog="""\b
Examples:
  kbundle inspect model.kbundle
  kbundle inspect model.kbundle --json | jq .manifest.environment.keras
"""
)
@_BUNDLE
@_option_json
@_handle_errors("as_json")
def inspect(bundle: Path, as_json: bool) -> None:
    """Summarise BUNDLE's manifest. Reads only the manifest; runs and imports nothing."""
    from kbundle.pipelines.read import inspect as inspect_bundle

    head = inspect_bundle(bundle)
    if as_json:
        from kbundle.signing.signatures import signer_ids

        signers = signer_ids(head.signature)
        _json_out(
            {
                "ok": True,
                "digest": head.digest,
                "signed": head.signature is not None,
                "signers": list(signers) if isinstance(signers, tuple) else None,
                "manifest": head.manifest.to_dict(),
            }
        )
        return
    from kbundle.cli.render import render_manifest

    _out(render_manifest(head))


# --------------------------------------------------------------------------------------------
# Bundled code: what loading it reports, and reviewing it


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """kbundle's own warnings (a loaded bundle's code met a same-named definition here) as one
    ``kbundle: warning:`` line each; everything else as Python shows it, its message on one
    line and escaped too (Keras's warnings quote layer names from the model's config)."""
    if category.__module__.startswith("kbundle."):
        _err(f"kbundle: warning: {message}")
        return
    from kbundle.cli.render import printable

    text = warnings.formatwarning(
        printable(str(message), keep_newlines=False), category, filename, lineno, line
    )
    stream = file if file is not None else sys.stderr
    if stream is None:  # no stderr at all (pythonw): as Python's own, nowhere to show it
        return
    with contextlib.suppress(OSError):  # as Python's own: a closed stderr loses the warning
        stream.write(printable(text, keep_newlines=True))


@main.command(
    "show-code",
    epilog="""\b
Examples:
  kbundle show-code model.kbundle
  kbundle show-code model.kbundle MyCustomLayer
  kbundle show-code model.kbundle 'acme>Scale' --json | jq -r '.objects[0].files[0].text'
""",
)
@_BUNDLE
@click.argument("name", required=False)
@_option_json
@_handle_errors("as_json")
def show_code(bundle: Path, name: str | None, as_json: bool) -> None:
    """Print the code BUNDLE carries for its custom objects (or for NAME only), for review.

    Verifies the bundle first. Never imports, runs or unpickles anything, and never loads
    Keras or TensorFlow. A pickled object is shown by the definition text captured when it
    was packed; the pickle itself is what would run.
    """
    from kbundle.pipelines.read import show_code as bundled_code

    listings = bundled_code(bundle, name)
    if not listings and not as_json:
        _err(f"{bundle} carries no custom-object code: nothing would run when it is loaded")
    if as_json:
        _json_out(
            {
                "ok": True,
                "objects": [
                    {
                        **dataclasses.asdict(listing.obj),
                        "files": [
                            {"path": f.path, "module": f.module, "digest": f.digest, "text": f.text}
                            for f in listing.files
                        ],
                    }
                    for listing in listings
                ],
            }
        )
        return
    from kbundle.code.bundled import render_listings

    _out(render_listings(listings), nl=False)


@main.command(
    epilog="""\b
Examples:
  kbundle unpack model.kbundle -d served-model
  kbundle unpack model.kbundle -d served-model --no-load --force
  kbundle unpack model.kbundle -d out --expect sha256:3f2a... --trust-code
  kbundle unpack model.kbundle -d out --key release.pub
  kbundle unpack model.kbundle -d out --policy strict
  kbundle unpack model.kbundle -d out --severity keras.backend=warn --ignore-env
"""
)
@_BUNDLE
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
@_option_expect
@_option_trust
@_option_trusted_keys
@_option_environment_gate
@_option_policy
@_force_option(
    "Replace DEST when it is a previous unpack's output, unchanged: a directory holding nothing "
    "but what its kbundle.json lists. Never a symbolic link, the current directory or one "
    "holding it, nor a directory holding BUNDLE or anything else."
)
@_option_quiet
@_option_json
@_handle_errors("as_json")
def unpack(
    bundle: Path,
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
    quiet: bool,
    as_json: bool,
) -> None:
    """Verify BUNDLE while extracting it into DEST, then prove the model loads.

    DEST appears only when every member verified; it holds the payload and kbundle.json, the
    manifest, which lists all of it and marks DEST as an unpack's output: --force replaces
    only such a directory, and only while it holds nothing else. Before loading, the recorded
    environment is checked (as 'kbundle check' does): errors refuse with exit 3 unless
    --ignore-env, warnings are shown. After loading, the stored probe input is run again and
    the outputs compared. With --no-load nothing runs here, so differences are shown but
    refuse nothing.
    """
    from kbundle.env.rules import resolve_policy
    from kbundle.pipelines.read import LoadOptions
    from kbundle.pipelines.read import unpack as unpack_bundle

    options = LoadOptions(
        trust_code=trust_code,
        allow_distributions=allow_distributions,
        safe_mode=not unsafe_lambda,
        ignore_env=ignore_env,
        env_policy=resolve_policy(policy, severity),
        probe=not no_probe,
    )
    with _progress("unpacking", not quiet and not as_json) as progress:
        result = unpack_bundle(
            bundle,
            destination,
            force=force,
            expect=expect,
            load_model=not no_load,
            options=options,
            trusted_keys=_trusted(trusted_keys),
            require_signature=require_signature,
            progress=progress,
        )
    loaded: dict[str, Any] | None = None
    if result.model is not None:
        from kbundle.models import keras_io

        loaded = keras_io.describe_live_model(result.model)
    if as_json:
        signature = result.report.signature.to_dict() if result.report.signature else None
        _json_out(
            {
                "ok": True,
                "destination": str(result.path),
                "digest": result.report.head.digest,
                "model": str(result.model_path),
                "loaded": loaded is not None,
                "signature": signature,
                "environment": [f.to_dict() for f in result.environment],
            }
        )
        return
    _print_environment_concerns(result.environment)
    if not quiet:
        signed = f" ({result.report.signature.describe()})" if result.report.signature else ""
        _err(f"verified {_count(result.report.files_checked, 'file')} into {result.path}{signed}")
        if loaded is not None:
            _err(
                f"model loads: {loaded['class_name']} {loaded['name']!r}, "
                f"{loaded['parameter_count']} parameters"
            )
        for finding in result.environment:
            if finding.location == "probe" and finding.severity == Severity.OK:
                _err(f"probe: {finding.problem} ({finding.actual}; {finding.expected})")
    _out(str(result.model_path))


# --------------------------------------------------------------------------------------------
# Environment: check, env export, env create


@main.command(
    epilog="""\b
Examples:
  kbundle check model.kbundle
  kbundle check model.kbundle --policy strict
  kbundle check model.kbundle --severity keras.backend=warn --severity 'distributions.*=info'
  kbundle check model.kbundle --json | jq '.findings[] | select(.severity != "ok")'
"""
)
@_BUNDLE
@_option_policy
@_option_json
@_handle_errors("as_json")
def check(bundle: Path, policy: str | None, severity: tuple[str, ...], as_json: bool) -> None:
    """Can this environment load BUNDLE? Compare the recorded environment field by field.

    Prints a table (field, recorded, current, severity), why each difference matters and
    what to do, then the verdict. Exit 0 when nothing is an error, 3 otherwise. Reads only the
    manifest and installed metadata: imports neither TensorFlow nor Keras nor bundled code.
    Rules and policies: docs/compatibility.md; [tool.kbundle] in pyproject.toml sets defaults.
    """
    from kbundle.env.rules import check as check_bundle

    report = check_bundle(bundle, policy=policy, severity=severity)
    if as_json:
        code = EXIT_OK if report.ok else exit_code_for(errors.EnvironmentMismatchError)
        _json_out({"bundle": str(bundle), **report.to_dict(), "exit_code": code})
        if code:
            sys.exit(code)
        return
    from kbundle.cli.render import render_compat

    _out(render_compat(report))
    report.raise_for_errors(str(bundle), loading=False)


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
  kbundle env export model.kbundle --trust-code   # lets an https --index-url through
""",
)
@_BUNDLE
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
@_option_trust_sources
@_option_force
@_handle_errors()
def env_export(
    bundle: Path, output: Path | None, hashed: bool | None, trust_code: bool, force: bool
) -> None:
    """Write BUNDLE's pinned requirements (verified first), for pip install --no-deps -r.

    Every line must be a name==version pin (with --hash=sha256 options in a hashed lock),
    a comment or blank; otherwise nothing is written: exit 4 for a pip option, a path or a
    URL (--trust-code lets https indexes and URLs through), exit 1 for any other line.
    """
    from kbundle.pipelines.rebuild import export_requirements

    text, with_hashes = export_requirements(bundle, hashed=hashed, trust_code=trust_code)
    if output is None:
        click.echo(text, nl=False)
        return
    from kbundle.storage.atomic import atomic_file, check_destination

    check_destination(output, force=force, what="requirements file")
    with atomic_file(output, force=force) as handle:
        handle.write(text.encode("utf-8"))
    _err(f"wrote {output} ({'hash-locked' if with_hashes else 'pins without hashes'})")


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
@_BUNDLE
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
@_option_trust_sources
@_option_quiet
@_option_json
@_handle_errors("as_json")
def env_create(
    bundle: Path,
    directory: Path,
    python: str | None,
    kbundle_spec: str | None,
    trust_code: bool,
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

    step = None if quiet or as_json else (lambda text: _err(f"kbundle: {text}"))
    created = create_environment(
        bundle,
        directory,
        python=python,
        kbundle_spec=kbundle_spec,
        trust_code=trust_code,
        step=step,
    )
    if as_json:
        _json_out(
            {
                "ok": True,
                "directory": str(created.directory),
                "python": created.python,
                "hashed": created.hashed,
                "backend": created.backend,
                "findings": [f.to_dict() for f in created.findings],
            }
        )
        return
    if not quiet:
        install = "hash-checked" if created.hashed else "not hash-checked (no hashed lock)"
        _err(
            f"created {created.directory}: Python {created.python}, {install}; "
            "kbundle check inside it is clean"
        )
        if created.backend and created.backend != "tensorflow":
            _err(f"set KERAS_BACKEND={created.backend} when using it")
    click.echo(str(created.python_executable))


# --------------------------------------------------------------------------------------------
# Signing: keygen and sign (docs/signing.md)


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
@_option_passphrase
@_option_force
@_option_json
@_handle_errors("as_json")
def keygen(
    name: Path, no_passphrase: bool, passphrase_file: Path | None, force: bool, as_json: bool
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
        _json_out(
            {
                "ok": True,
                "private_key": str(generated.private_path),
                "public_key": str(generated.public_path),
                "key_id": generated.key_id,
                "encrypted": generated.encrypted,
            }
        )
        return
    protection = "passphrase-protected" if generated.encrypted else "not encrypted"
    _err(
        f"wrote private key {generated.private_path} ({protection}; keep it secret) "
        f"and public key {generated.public_path}"
    )
    _err(
        f"trust it where bundles are verified: copy {generated.public_path} "
        f"into {keys.trusted_keys_directory()}, or pass --key {generated.public_path}"
    )
    _out(f"{generated.key_id}  {generated.public_path}")


@main.command(
    epilog="""\b
Examples:
  kbundle sign model.kbundle --key release.key
  kbundle sign model.kbundle --key release.key -o signed.kbundle
  kbundle sign model.kbundle --key release.key --passphrase-file secret.txt
"""
)
@_BUNDLE
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
    type=click.Path(path_type=Path),
    help="Write the signed bundle here instead of replacing BUNDLE.",
)
@_option_passphrase
@_option_force_bundle
@_option_quiet
@_option_json
@_handle_errors("as_json")
def sign(
    bundle: Path,
    key_path: Path,
    output: Path | None,
    passphrase_file: Path | None,
    force: bool,
    quiet: bool,
    as_json: bool,
) -> None:
    """Sign BUNDLE's manifest (and so everything it lists) with a private key.

    BUNDLE is verified first. The digest does not change: the signature is stored beside the
    manifest. Signatures by other keys are kept. BUNDLE is replaced atomically.
    """
    from kbundle.pipelines.sign import sign_bundle

    signing_key = _load_signing_key(key_path, passphrase_file)
    result = sign_bundle(bundle, signing_key, output=output, force=force)
    if as_json:
        _json_out(
            {
                "ok": True,
                "bundle": str(result.path),
                "digest": result.digest,
                "key_id": result.key_id,
                "signers": list(result.signers),
            }
        )
        return
    if not quiet:
        _err(
            f"signed {result.path} with {result.key_id}"
            + ("" if len(result.signers) == 1 else f" ({len(result.signers)} signatures)")
        )
    _out(f"{result.digest}  {result.path}")


# --------------------------------------------------------------------------------------------
# doctor (kbundle.doctor.diagnose): diagnose a model that will not load


@main.command(
    epilog="""Exit codes: 0 the model loads; 1 corruption (damaged, truncated or unsafe file, or a
bundle failing verification); 3 environment (another Keras major, backend or TensorFlow; ops
this build lacks); 5 serialization (unresolvable custom objects, Lambda layers) or an
unclassified load failure; 4 not loaded because loading would run code nobody trusted (a
SavedModel's graph: pass --trust-code); 2 the path is missing or no kind of model.

\b
Examples:
  kbundle doctor model.h5
  kbundle doctor exported_savedmodel/ --trust-code
  kbundle doctor model.kbundle --json | jq .findings.serialization
"""
)
@click.argument("target", metavar="FILE", type=click.Path(path_type=Path))
@click.option(
    "--timeout",
    default=600.0,
    show_default=True,
    type=float,
    help="Seconds the child process may take to check and load the model.",
)
@click.option(
    "--trust-code",
    is_flag=True,
    help="Let the load run code: a SavedModel's graph (its functions and resource "
    "initialisers run when it is loaded). Without it a SavedModel is checked, not loaded.",
)
@_option_json
@_handle_errors("as_json")
def doctor(target: Path, timeout: float, trust_code: bool, as_json: bool) -> None:
    """Diagnose why FILE does or does not load: a .keras/.h5 file, SavedModel or bundle.

    Reports every problem found, with evidence and a fix, filed as corruption, serialization
    or environment; then loads the model in a child process (safe mode on, no bundled code,
    a SavedModel only with --trust-code) and classifies the real error.
    """
    from kbundle.doctor.diagnose import diagnose, render_diagnosis

    diagnosis = diagnose(target, timeout=timeout, trust_code=trust_code)
    failure = diagnosis.error()
    code = exit_code_for(failure) if failure else EXIT_OK
    if as_json:
        _json_out({"ok": diagnosis.loads, "exit_code": code, **diagnosis.to_dict()})
    else:
        _out(render_diagnosis(diagnosis))
        if failure:
            _err(f"kbundle: error: {failure}")
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
