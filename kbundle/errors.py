"""The kbundle exception hierarchy.

Every failure kbundle reports is a :class:`KbundleError`. Each concrete error also subclasses
the builtin exception it stands in for, so ``except ValueError`` or ``except FileExistsError``
in a caller's code keeps working. Each class carries the exit code the ``kbundle`` command
ends with when it is raised (``exit_code``; the CLI's table is derived from these classes);
the library itself never prints or exits.

An error's ``str()`` is one line: what failed, the value received, and what to do. Errors that
come from collecting several problems carry them in ``findings``. Stable: public API.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import ClassVar, TypeVar

from kbundle.findings import Finding

__all__ = [
    "BundleFormatError",
    "EnvironmentMismatchError",
    "IntegrityError",
    "KbundleError",
    "LimitExceededError",
    "ModelFileError",
    "ModelLoadError",
    "NotABundleError",
    "OutputExistsError",
    "PackError",
    "SignatureError",
    "StorageError",
    "UnsupportedFormatVersionError",
    "UntrustedCodeError",
    "UsageError",
    "exception_summary",
    "first_sentence",
]


_E = TypeVar("_E", bound="KbundleError")


class KbundleError(Exception):
    """Base class of every kbundle error.

    ``message`` says what failed and shows the value received; ``hint`` names the flag or step
    that fixes it; ``findings`` lists every individual problem when there are several.
    ``exit_code`` is what the ``kbundle`` command exits with (70, internal error, for this
    base class: every error kbundle raises is one of the subclasses).
    """

    exit_code: ClassVar[int] = 70

    def __init__(
        self,
        message: str,
        *,
        hint: str | None = None,
        findings: Sequence[Finding] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.findings: tuple[Finding, ...] = tuple(findings)

    @classmethod
    def from_findings(
        cls: type[_E],
        findings: Sequence[Finding],
        first: str,
        *,
        noun: str = "problem",
        hint: str | None = None,
    ) -> _E:
        """One error for several findings, raised once: ``first`` describes the first finding,
        the count of the others follows (``(and 2 more problems)``; ``noun`` names them), and
        the hint is ``hint``, else the first finding's fix. The one place that builds this
        message."""
        more = len(findings) - 1
        rest = f" (and {more} more {noun}{'s' if more > 1 else ''})" if more else ""
        return cls(first + rest, hint=hint or findings[0].fix, findings=findings)

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}; {self.hint}"
        return self.message


# Keras 3 wraps an error raised inside a layer's call in a frame: this line, the error in
# terminal bold, then "Arguments received by ...". The error is what a user needs to see.
_KERAS_CALL_FRAME = "Exception encountered when calling"
_TERMINAL_BOLD = re.compile(r"\x1b\[[01]m")


def exception_summary(exc: BaseException) -> str:
    """``TypeName: first line of the message``: how a foreign exception appears in ours
    (for an error Keras wrapped in its call frame, the first line of the error inside)."""
    text = str(exc).strip()
    if text.startswith(_KERAS_CALL_FRAME) and "\n" in text:
        inner = text.split("\n", 1)[1].split("Arguments received by", 1)[0]
        text = _TERMINAL_BOLD.sub("", inner).strip() or text
    return f"{type(exc).__name__}: {text.splitlines()[0][:300]}" if text else type(exc).__name__


class UsageError(KbundleError, ValueError):
    """The caller asked for something that cannot be done as asked (bad option, bad path)."""

    exit_code = 2


class OutputExistsError(KbundleError, FileExistsError):
    """The output already exists and overwriting was not allowed."""

    exit_code = 2


class NotABundleError(KbundleError, ValueError):
    """The input is not a kbundle bundle at all (wrong kind of file)."""

    exit_code = 2


class UnsupportedFormatVersionError(KbundleError, ValueError):
    """The bundle was written in a format major version this kbundle cannot read."""

    exit_code = 2


class IntegrityError(KbundleError, ValueError):
    """The bundle is corrupt, truncated, tampered with, or structurally unsafe."""

    exit_code = 1


class BundleFormatError(IntegrityError):
    """The bundle breaks a rule of the format (bad names, member kinds, manifest fields)."""


class LimitExceededError(IntegrityError):
    """A size, count or depth limit was exceeded (defence against bombs)."""


class ModelFileError(IntegrityError):
    """A model file is corrupt or unsafe to hand to Keras (bad CRC, truncation, zip or HDF5
    bomb, external links), found by the pre-load checks even inside an intact bundle."""


class SignatureError(IntegrityError):
    """A signature is present but does not verify, or a required signature is missing."""


class EnvironmentMismatchError(KbundleError, RuntimeError):
    """The current environment cannot load the bundled model under the chosen policy."""

    exit_code = 3


class UntrustedCodeError(KbundleError, PermissionError):
    """Loading would run bundled code that nobody trusted."""

    exit_code = 4


class ModelLoadError(KbundleError, RuntimeError):
    """The verified model failed to load (or to be described) in Keras."""

    exit_code = 5


class StorageError(KbundleError, OSError):
    """A bundle's store failed or refused: a URL that does not exist, access denied,
    throttling or a broken connection that retries did not overcome, a missing extra."""

    exit_code = 2


class PackError(KbundleError, RuntimeError):
    """A model could not be packed (it failed to save, or something it needs cannot travel)."""

    exit_code = 2


def first_sentence(text: str, limit: int = 300) -> str:
    """Another library's message in one short line: its first sentence, whitespace folded
    (Keras appends whole model configs to some of its errors)."""
    text = " ".join(text.split())
    end = re.search(r"\.\s(?=[A-Z])", text[20:])  # "vs. stored" goes on, ". Please" ends
    if end is not None:
        text = text[: 20 + end.start() + 1]
    return text if len(text) <= limit else text[: limit - 3] + "..."
