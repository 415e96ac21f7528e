"""The ``kbundle`` command group, and how every command's output and errors leave it.

The command line is the only place that prints or exits. Commands (kbundle.cli.pack, .read,
.env, .signing, .doctor) compose the public functions and render their results (text through
kbundle.cli.render, or ``--json``); ``handle_errors`` maps errors to exit codes, which each
error class carries (``KbundleError.exit_code``; ``EXIT_CODES`` is derived from them). Bad
input never shows a traceback: it shows one line saying what failed and what fixes it
(``KBUNDLE_DEBUG=1`` adds the traceback for bug reports). Stable: commands, options and exit
codes are public.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import click

from kbundle import errors
from kbundle._version import __version__
from kbundle.findings import Finding, Severity

# What each exit code means (docs/cli.md shows this table).
EXIT_MEANINGS = {
    1: "integrity failure: corrupt, truncated, tampered or unsafe bundle",
    2: "usage error or unreadable input",
    3: "environment incompatible",
    4: "untrusted code refused",
    5: "the model failed to load after verification",
}
# Every error class with its exit code and what the code means, derived from the classes
# (``KbundleError.exit_code``): the one table of exit codes.
_ERRORS = [getattr(errors, name) for name in errors.__all__]
EXIT_CODES: tuple[tuple[type[errors.KbundleError], int, str], ...] = tuple(
    (kind, kind.exit_code, EXIT_MEANINGS[kind.exit_code])
    for kind in _ERRORS
    if isinstance(kind, type)
    and issubclass(kind, errors.KbundleError)
    and kind.exit_code in EXIT_MEANINGS
)
EXIT_OK = 0
EXIT_INTERRUPTED = 130  # the shell convention for SIGINT
EXIT_INTERNAL = errors.KbundleError.exit_code  # EX_SOFTWARE: a bug in kbundle, not the input
EXIT_OS_ERROR = 2  # the system refused a read or write: unreadable input or unwritable output
# `kbundle diff` found differences: not an error, so not 1 (an integrity failure of either
# bundle exits 1), and clear of the error codes 1-5 and of 6-9 left for new ones.
EXIT_DIFFERENT = 10

F = TypeVar("F", bound=Callable[..., Any])


def exit_code_for(error: BaseException | type[BaseException]) -> int:
    """The exit code for an error, given as an instance or as its class: the class's own
    (``KbundleError.exit_code``), and 70 for anything that is not a kbundle error."""
    kind = error if isinstance(error, type) else type(error)
    return kind.exit_code if issubclass(kind, errors.KbundleError) else EXIT_INTERNAL


# --------------------------------------------------------------------------------------------
# Output helpers


# Human text leaves the CLI only through _err and _out, which escape every character that is
# not printable (kbundle.cli.render.printable): names, manifest strings, messages quoting a bundle
# and code under review must never move a terminal's cursor, erase a line or reorder text.


def err(text: str) -> None:
    """One line on stderr: a newline inside it (from a bundle's value) is shown escaped."""
    from kbundle.cli.render import printable

    click.echo(printable(text, keep_newlines=False), err=True)


def out(text: str, *, nl: bool = True) -> None:
    """Human text on stdout, lines and tabs kept (the renderers escaped each value already)."""
    from kbundle.cli.render import printable

    click.echo(printable(text, keep_newlines=True, keep_tabs=True), nl=nl)


def print_findings(findings: tuple[Finding, ...] | list[Finding]) -> None:
    for finding in findings:
        err(f"  - {finding.describe()}")


def print_environment_concerns(findings: list[Finding] | tuple[Finding, ...]) -> None:
    """Warnings (and errors let through by --ignore-env), once each, one line each."""
    for finding in findings:
        if finding.severity >= Severity.WARN:
            label = "warning" if finding.severity == Severity.WARN else "ignored error"
            err(f"kbundle: {label}: environment {finding.describe()}")


def json_out(data: Any) -> None:
    # ASCII only: json.dumps escapes C0 controls but would pass C1 controls (CSI U+009B), bidi
    # overrides and lone surrogates through raw, so a consumer printing the text (or jq without
    # -r) could still meet them. Every parser restores the exact strings from \u escapes.
    click.echo(json.dumps(data, indent=2, ensure_ascii=True))


@dataclass(frozen=True, slots=True)
class ProgressDisplay:
    """What a command shows while it works: ``bytes(done, total)`` moves the bar, ``phase``
    names a step that has no bytes to count (loading a model, running the probe). Both are
    ``None`` when nothing is shown (not a terminal, or --quiet)."""

    bytes: Callable[[int, int], None] | None = None
    phase: Callable[[str], None] | None = None


@contextmanager
def progress_bar(label: str, enabled: bool) -> Iterator[ProgressDisplay]:
    """A progress bar on stderr when it is a terminal and not --quiet; else nothing. ``label``
    names the byte-counting step; phases replace it while they last."""
    if not enabled or not sys.stderr.isatty():
        yield ProgressDisplay()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        SpinnerColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        SpinnerColumn(),
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            # total 0: the size is unknown (a stream or an object store that does not say)
            bar.update(task, description=label, completed=done, total=total or None)

        def phase(text: str) -> None:
            from kbundle.cli.render import printable

            bar.update(task, description=printable(text, keep_newlines=False), total=None)
            bar.refresh()  # now: the step may hold the GIL (imports) past the next auto-refresh

        yield ProgressDisplay(update, phase)


def handle_errors(json_flag: str | None = None) -> Callable[[F], F]:
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
                    json_out(
                        {
                            "ok": False,
                            "exit_code": code,
                            "error": exc.message,
                            "hint": exc.hint,
                            "findings": [f.to_dict() for f in exc.findings],
                        }
                    )
                else:
                    err(f"kbundle: error: {exc}")
                    if len(exc.findings) > 1:
                        err(f"all {len(exc.findings)} problems:")
                        print_findings(exc.findings)
                if os.environ.get("KBUNDLE_DEBUG"):
                    traceback.print_exc()
                sys.exit(code)
            except OSError as exc:
                # The machine's problem, not kbundle's: a read or write the system refused.
                where = f": {exc.filename}" if exc.filename else ""
                err(f"kbundle: error: {exc.strerror or exc}{where}; check the path and permissions")
                sys.exit(EXIT_OS_ERROR)
            except KeyboardInterrupt:
                err("kbundle: interrupted; no partial output was left behind")
                sys.exit(EXIT_INTERRUPTED)
            except Exception as exc:
                err(
                    f"kbundle: internal error: {type(exc).__name__}: {exc}; this is a bug in "
                    "kbundle, please report it (KBUNDLE_DEBUG=1 shows the traceback)"
                )
                if os.environ.get("KBUNDLE_DEBUG"):
                    traceback.print_exc()
                sys.exit(EXIT_INTERNAL)

        return wrapper  # type: ignore[return-value]

    return decorate


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""Exit codes: 0 ok; 1 integrity failure; 2 usage error or unreadable input;
3 environment incompatible; 4 untrusted code refused; 5 model failed to load;
10 the bundles differ (kbundle diff); 70 internal error (a bug); 130 interrupted.

A BUNDLE is a file, - for standard input, or a URL of any fsspec filesystem (s3://, gs://,
https://, ...; --storage-option passes options to it; docs/storage.md).

\b
Examples:
  kbundle pack model.keras -o model.kbundle
  kbundle verify model.kbundle --expect sha256:3f2a...
  kbundle unpack model.kbundle -d served-model
  kbundle verify s3://models/prod/model.kbundle --expect sha256:3f2a...
""",
)
@click.version_option(__version__, prog_name="kbundle")
def main() -> None:
    """Pack Keras/TensorFlow models into verified, self-describing bundles, and load them back."""
    from kbundle.cli.process import quiet_blas_threads, quiet_library_logs, retain_freed_memory
    from kbundle.models import keras_io

    keras_io.filter_native_logs = True
    # Warnings are human text too: kbundle's as warning lines (a loaded bundle's code
    # conflicts), every one escaped.
    warnings.showwarning = show_warning
    retain_freed_memory()
    quiet_blas_threads()
    quiet_library_logs()


def show_warning(
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
        err(f"kbundle: warning: {message}")
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
