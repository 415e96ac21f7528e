"""Checks of a SavedModel directory before TensorFlow reads it: ``saved_model.pb`` parses as
protobuf holding a MetaGraph, and the variables index and every data shard it names are
present. Stable: the checks may grow.
"""

from __future__ import annotations

import re
from pathlib import Path

from kbundle.findings import Finding
from kbundle.models.checks.common import (
    FileFindings,
)
from kbundle.models.formats import (
    read_saved_model,
    saved_model_file,
)
from kbundle.models.protowire import WireError

__all__ = ["check_saved_model"]

_SHARD_RE = re.compile(r"^variables\.data-(\d{5})-of-(\d{5})$")


def check_saved_model(path: Path, name: str) -> FileFindings:
    proto = saved_model_file(path)
    if proto is None:
        return [
            Finding(
                location=f"{name}/saved_model.pb",
                problem="missing",
                fix="this directory is not a complete SavedModel; export it again",
            )
        ]
    findings: FileFindings = []
    if proto.name == "saved_model.pb":
        where = f"{name}/saved_model.pb"
        try:
            info = read_saved_model(path)
        except WireError as exc:
            size = proto.stat().st_size
            truncated = "declares" in exc.problem or "truncated" in exc.problem
            findings.append(
                Finding(
                    location=where,
                    problem=f"not a valid SavedModel protobuf: {exc}",
                    actual=f"{size} bytes" if truncated else None,
                    why="the file was cut short" if truncated else "the file's bytes are damaged",
                    fix="restore the SavedModel from a backup or export it again",
                )
            )
            info = None
        except (OSError, ValueError) as exc:
            findings.append(
                Finding(
                    location=where,
                    problem=f"unreadable: {exc}",
                    fix="restore the SavedModel from a backup or export it again",
                )
            )
            info = None
        if info is not None and proto.stat().st_size and not info.tags and not info.signatures:
            findings.append(
                Finding(
                    location=where,
                    problem="holds no MetaGraph",
                    fix="this is not a SavedModel TensorFlow wrote; export it again",
                )
            )
        uses_variables = info is not None and "RestoreV2" in info.ops
    else:
        uses_variables = False
    return findings + _variables_findings(path / "variables", name, uses_variables)


def _variables_findings(directory: Path, name: str, uses_variables: bool) -> FileFindings:
    where = f"{name}/variables"
    fix = "the SavedModel is incomplete; copy the whole directory again or export it again"
    if not directory.is_dir():
        if uses_variables:
            return [
                Finding(
                    location=where, problem="missing, but the graph restores variables", fix=fix
                )
            ]
        return []
    names = sorted(entry.name for entry in directory.iterdir())
    shards = [match for entry in names if (match := _SHARD_RE.match(entry))]
    findings: FileFindings = []
    if "variables.index" not in names and (shards or uses_variables):
        findings.append(Finding(location=f"{where}/variables.index", problem="missing", fix=fix))
    totals = {int(match.group(2)) for match in shards}
    if len(totals) > 1:
        findings.append(
            Finding(
                location=where,
                problem="data shards disagree on their count",
                actual=", ".join(match.string for match in shards),
                fix=fix,
            )
        )
    for total in totals:
        present = {int(match.group(1)) for match in shards if int(match.group(2)) == total}
        for index in sorted(set(range(total)) - present)[:20]:
            findings.append(
                Finding(
                    location=f"{where}/variables.data-{index:05d}-of-{total:05d}",
                    problem="missing data shard",
                    fix=fix,
                )
            )
    if "variables.index" in names and not shards:
        findings.append(
            Finding(
                location=f"{where}/variables.data-00000-of-00001",
                problem="missing: the index has no data shard",
                fix=fix,
            )
        )
    return findings
