"""``kbundle diff``: what differs between two bundles."""

from __future__ import annotations

import sys

import click

from kbundle.cli.app import EXIT_DIFFERENT, EXIT_OK, handle_errors, json_out, main, out
from kbundle.cli.options import json_option, policy_options


@main.command(
    epilog="""\b
Exit codes: 0 the bundles are equal (how they were made aside); 10 they differ;
1 either bundle fails verification; 2 unreadable input.

\b
Examples:
  kbundle diff ckpt/epoch001.kbundle ckpt/epoch003.kbundle
  kbundle diff old.kbundle new.kbundle --json | jq '.changes[] | select(.section == "weights")'
  kbundle diff old.kbundle new.kbundle --manifest-only --policy strict
  kbundle diff a.kbundle b.kbundle >/dev/null || echo "the model changed"
  kbundle diff models:/churn/1 models:/churn/2      # MLflow URIs, with kbundle[mlflow]
"""
)
# Strings, not paths: an MLflow URI (runs:/..., models:/...) is not a file name.
@click.argument("before", type=click.Path(path_type=str, dir_okay=False))
@click.argument("after", type=click.Path(path_type=str, dir_okay=False))
@click.option(
    "--manifest-only",
    is_flag=True,
    help="Compare the two manifests only: no verification, and no architecture, weight "
    "dataset or source diff (fast for large bundles).",
)
@policy_options
@json_option
@handle_errors("as_json")
def diff(
    before: str,
    after: str,
    manifest_only: bool,
    policy: str | None,
    severity: tuple[str, ...],
    as_json: bool,
) -> None:
    """Show what differs between bundles BEFORE and AFTER.

    Both are verified, then compared section by section: the model, its architecture (layers
    added, removed or changed, from the configs), its weights (each dataset that differs, by
    how many values and how much), every member by digest, custom objects (bundled source as
    a unified diff), the environment (the fields 'kbundle check' compares, BEFORE as recorded,
    AFTER as current), assets and labels. Notes (creation time, provenance, the model file's
    save time, other installed distributions) are shown but do not count. Nothing is
    imported, unpickled or loaded. BEFORE and AFTER may be MLflow URIs (runs:/..., models:/...).
    """
    from kbundle.pipelines.diff import diff as compare

    result = compare(before, after, deep=not manifest_only, policy=policy, severity=severity)
    code = EXIT_OK if result.equal else EXIT_DIFFERENT
    if as_json:
        json_out({**result.to_dict(), "exit_code": code})
    else:
        from kbundle.cli.render import render_diff

        out(render_diff(result, code))
    sys.exit(code)
