"""The ``kbundle`` command line: the only place that prints or exits.

Commands compose the public functions, render their results (text or ``--json``), and map
errors to exit codes through ``EXIT_CODES``, the one table of them. Bad input never shows a
traceback: it shows one line saying what failed and what fixes it (``KBUNDLE_DEBUG=1`` adds
the traceback for bug reports). Stable: commands, options and exit codes are public.
"""

from __future__ import annotations

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

F = TypeVar("F", bound=Callable[..., Any])


def exit_code_for(exc: BaseException) -> int:
    for kind, code, _ in EXIT_CODES:
        if isinstance(exc, kind):
            return code
    return EXIT_INTERNAL


# --------------------------------------------------------------------------------------------
# Output helpers


def _err(text: str) -> None:
    click.echo(text, err=True)


def _print_findings(findings: tuple[Finding, ...] | list[Finding]) -> None:
    for finding in findings:
        _err(f"  - {finding.describe()}")


def _json_out(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, ensure_ascii=False))


@contextmanager
def _progress(label: str, enabled: bool) -> Iterator[Callable[[int, int], None] | None]:
    """A progress bar on stderr when it is a terminal and not --quiet; else nothing."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.console import Console  # noqa: PLC0415 - only when a bar is drawn
    from rich.progress import (  # noqa: PLC0415
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
    return click.option("--json", "as_json", is_flag=True, help="Print a JSON result on stdout.")(command)


def _option_quiet(command: F) -> F:
    return click.option("-q", "--quiet", is_flag=True, help="No progress bar and no summary.")(command)


def _option_force(command: F) -> F:
    return click.option("--force", is_flag=True, help="Replace an existing output.")(command)


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
    return click.option(
        "--trust-code",
        is_flag=True,
        help="Allow the bundled custom-object code to run (review it with show-code first).",
    )(command)


_BUNDLE = click.argument("bundle", type=click.Path(path_type=Path, dir_okay=True))


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


@main.command(
    epilog="""\b
Examples:
  kbundle pack model.keras -o model.kbundle
  kbundle pack model.keras -o model.kbundle --custom-objects mypkg.layers
  kbundle pack model.keras -o model.kbundle --level 19 --force
  kbundle pack big.keras -o big.kbundle --level none --quiet
"""
)
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--custom-objects", "custom_modules", multiple=True, metavar="MODULE", help="Import MODULE (from the current directory or PYTHONPATH) to find the model's custom objects; repeatable.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="The bundle to write (NAME.kbundle).")
@click.option("--level", default="3", show_default=True, metavar="1..22|none", help="zstd compression level, or 'none' to store.")
@click.option("--threads", default=-1, show_default=True, type=int, help="zstd worker threads (-1: one per CPU, 0: no workers).")
@_option_force
@_option_quiet
@_option_json
@_handle_errors("as_json")
def pack(model: Path, custom_modules: tuple[str, ...], output: Path, level: str, threads: int, force: bool, quiet: bool, as_json: bool) -> None:
    """Pack MODEL (.keras, .h5 or SavedModel directory) into one verified bundle.

    Prints the bundle digest (sha256 of its manifest); pin it in deploy scripts with
    'kbundle verify --expect'. Nothing is written unless pack succeeds.
    """
    from kbundle.pack import pack as pack_model  # noqa: PLC0415

    with _progress("packing", not quiet) as progress:
        result = pack_model(model, output, force=force, level=level, threads=threads, progress=progress, custom_modules=custom_modules)
    if as_json:
        _json_out({"ok": True, "bundle": str(result.path), "digest": result.digest, "size": result.size, "model_format": result.manifest.model.format})
        return
    if not quiet:
        _err(f"packed {model} ({result.manifest.model.format}) into {result.path}: {_size(result.size)}, payload {_size(result.manifest.payload_size)}")
    click.echo(f"{result.digest}  {result.path}")


@main.command(
    epilog="""\b
Examples:
  kbundle verify model.kbundle
  kbundle verify model.kbundle --expect sha256:3f2a... || exit 1
  kbundle verify model.kbundle --json
"""
)
@_BUNDLE
@_option_expect
@_option_quiet
@_option_json
@_handle_errors("as_json")
def verify(bundle: Path, expect: str | None, quiet: bool, as_json: bool) -> None:
    """Check every member of BUNDLE: size, SHA-256, names, kinds, nothing extra or missing.

    Reports every problem at once. Never imports TensorFlow or Keras.
    """
    from kbundle.unpack import verify as verify_bundle  # noqa: PLC0415

    with _progress("verifying", not quiet and not as_json) as progress:
        report = verify_bundle(bundle, expect=expect, progress=progress)
    signed = report.head.signature is not None
    if as_json:
        _json_out({"ok": True, "digest": report.head.digest, "files": report.files_checked, "bytes": report.bytes_checked, "signed": signed, "findings": []})
        return
    if not quiet:
        note = "" if signed else " (integrity-checked, not signed)"
        _err(f"OK: {report.files_checked} files, {_size(report.bytes_checked)} verified{note}")
    click.echo(f"{report.head.digest}  {bundle}")


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
    from kbundle.unpack import inspect as inspect_bundle  # noqa: PLC0415

    head = inspect_bundle(bundle)
    if as_json:
        _json_out({"ok": True, "digest": head.digest, "signed": head.signature is not None, "manifest": head.manifest.to_dict()})
        return
    from kbundle.render import render_manifest  # noqa: PLC0415

    click.echo(render_manifest(head))


# --------------------------------------------------------------------------------------------
# Bundled code: what loading it reports, and reviewing it

_python_showwarning = warnings.showwarning


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None, line: str | None = None) -> None:
    """kbundle's own warnings (a loaded bundle's code met a same-named definition here) as one
    ``kbundle: warning:`` line each; everything else as Python shows it."""
    if category.__module__.startswith("kbundle."):
        _err(f"kbundle: warning: {message}")
    else:
        _python_showwarning(message, category, filename, lineno, file, line)


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
    from kbundle.unpack import show_code as bundled_code  # noqa: PLC0415

    listings = bundled_code(bundle, name)
    if as_json:
        _json_out({"ok": True, "objects": [{**dataclasses.asdict(listing.obj), "files": [{"path": f.path, "module": f.module, "digest": f.digest, "text": f.text} for f in listing.files]} for listing in listings]})
        return
    from kbundle.bundled_code import render_listings  # noqa: PLC0415

    click.echo(render_listings(listings), nl=False)


@main.command(
    epilog="""\b
Examples:
  kbundle unpack model.kbundle -d served-model
  kbundle unpack model.kbundle -d served-model --no-load --force
  kbundle unpack model.kbundle -d out --expect sha256:3f2a... --trust-code
"""
)
@_BUNDLE
@click.option("-d", "--dest", "destination", type=click.Path(path_type=Path), required=True, help="Directory to create with the verified files.")
@click.option("--no-load", is_flag=True, help="Only verify and extract; do not prove the model loads.")
@_option_expect
@_option_trust
@_option_force
@_option_quiet
@_option_json
@_handle_errors("as_json")
def unpack(bundle: Path, destination: Path, no_load: bool, expect: str | None, trust_code: bool, unsafe_lambda: bool, force: bool, quiet: bool, as_json: bool) -> None:
    """Verify BUNDLE while extracting it into DEST, then prove the model loads.

    DEST appears only when every member verified. The recorded environment is compared with
    this one and differences are shown.
    """
    from kbundle.compat import compare_environments  # noqa: PLC0415
    from kbundle.environment import capture_environment  # noqa: PLC0415
    from kbundle.unpack import LoadOptions  # noqa: PLC0415
    from kbundle.unpack import unpack as unpack_bundle  # noqa: PLC0415

    warnings.showwarning = _show_warning  # a loaded bundle's code conflicts, as warning lines
    options = LoadOptions(trust_code=trust_code, safe_mode=not unsafe_lambda)
    with _progress("unpacking", not quiet and not as_json) as progress:
        result = unpack_bundle(bundle, destination, force=force, expect=expect, load_model=not no_load, options=options, progress=progress)
    manifest = result.report.head.manifest
    differences = compare_environments(manifest.environment, capture_environment())
    loaded: dict[str, Any] | None = None
    if result.model is not None:
        from kbundle import keras_io  # noqa: PLC0415

        loaded = keras_io.describe_live_model(result.model)
    if as_json:
        _json_out({"ok": True, "destination": str(result.path), "digest": result.report.head.digest, "model": str(result.model_path), "loaded": loaded is not None, "environment": [f.to_dict() for f in differences]})
        return
    if not quiet:
        _err(f"verified {result.report.files_checked} files into {result.path}")
        for finding in differences:
            if finding.severity >= Severity.INFO:
                _err(f"  environment {finding.severity}: {finding.describe()}")
        if loaded is not None:
            _err(f"model loads: {loaded['class_name']} {loaded['name']!r}, {loaded['parameter_count']} parameters")
    click.echo(str(result.model_path))


if __name__ == "__main__":  # pragma: no cover
    main()
