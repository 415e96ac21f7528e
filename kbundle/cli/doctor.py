"""``kbundle doctor``: why a model file or bundle does (not) load."""

from __future__ import annotations

import sys

import click

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
    json_option,
    storage_option,
    storage_options,
)


@main.command(
    epilog="""Exit codes: 0 the model loads; 1 corruption (damaged, truncated or unsafe file, or a
bundle failing verification); 3 environment (another Keras major, backend or TensorFlow; ops
this build lacks); 5 serialization (unresolvable custom objects, Lambda layers) or an
unclassified load failure; 4 not loaded because loading would run code nobody trusted (a
bundle's own code, a SavedModel's graph: pass --trust-code); 2 the path is missing or no kind
of model.

\b
Examples:
  kbundle doctor model.h5
  kbundle doctor exported_savedmodel/ --trust-code
  kbundle doctor model.kbundle --json | jq .findings.serialization
  kbundle doctor s3://models/prod/model.kbundle
"""
)
@click.argument("target", metavar="FILE")
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
    help="Let the load run code: a bundle's own custom-object code, and a SavedModel's graph "
    "(its functions and resource initialisers run when it is loaded). Without it such a model "
    "is checked, not loaded (exit 4).",
)
@storage_option
@json_option
@handle_errors("as_json")
def doctor(
    target: str, timeout: float, trust_code: bool, storage_pairs: tuple[str, ...], as_json: bool
) -> None:
    """Diagnose why FILE does or does not load: a .keras/.h5 file, SavedModel or bundle
    (a bundle may be a URL or - for standard input).

    Reports every problem found, with evidence and a fix, filed as corruption, serialization
    or environment; then loads the model in a child process (safe mode on, no bundled code,
    a SavedModel only with --trust-code) and classifies the real error.
    """
    from kbundle.cli.render import render_diagnosis
    from kbundle.doctor.diagnose import diagnose

    diagnosis = diagnose(
        target,
        timeout=timeout,
        trust_code=trust_code,
        storage_options=storage_options(storage_pairs),
    )
    failure = diagnosis.error()
    code = exit_code_for(failure) if failure else EXIT_OK
    if as_json:
        json_out({"ok": diagnosis.loads, "exit_code": code, **diagnosis.to_dict()})
    else:
        out(render_diagnosis(diagnosis))
        if failure:
            err(f"kbundle: error: {failure}")
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
