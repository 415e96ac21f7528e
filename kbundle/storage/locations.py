"""What a bundle argument names, and how it is shown: a local path, ``-`` (standard input or
output), or the URL of an fsspec filesystem (``s3://``, ``gs://``, ``https://``, ...).

A ``str`` with a scheme (``NAME://``, fsspec's chained ``a::b://`` too) is a URL and
``file://`` a local path; ``-`` is standard input or output; anything else, and every
``os.PathLike``, is a local path (``./s3:/x`` names a local file). A URL can carry
credentials (``https://user:pass@host``, a presigned query string) and so can the storage
options that go with it; :attr:`Location.display` is the URL without them, and
:meth:`Location.scrub` takes them out of any text (another library's error message) before
kbundle shows it. Stable: internal.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from kbundle.errors import UsageError

__all__ = ["STDIO", "Location", "parse_location", "parse_storage_options", "redact_url"]

STDIO = "-"

# RFC 3986 scheme characters; fsspec chains filesystems with "::" (simplecache::s3://...).
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*(?:::[A-Za-z][A-Za-z0-9+.\-]*)*://")
_REDACTED = "<redacted>"
# Storage option names whose values are credentials (matched as substrings, any case, in
# nested dictionaries too: client_kwargs={"aws_secret_access_key": ...}).
_SECRET_NAMES = (
    "key",
    "secret",
    "token",
    "password",
    "credential",
    "sas",
    "signature",
    "auth",
    "connection_string",  # Azure: holds the account key (AccountKey=...) or a SAS
)
# The secret parts of an Azure connection string, scrubbed on their own too (a message may
# quote one part).
_CONNECTION_STRING_SECRETS = re.compile(r"(?:AccountKey|SharedAccessSignature)=([^;]+)", re.I)
# Shorter values are not scrubbed from messages: they would mangle ordinary words.
_MIN_SECRET_LENGTH = 4


@dataclass(frozen=True, slots=True)
class Location:
    """Where a bundle is read from or written to.

    Exactly one of ``path`` (a local file), ``url`` (an fsspec URL, as given: it may hold
    credentials) is set, or neither for standard input or output. ``options`` are the
    storage options for ``url``'s filesystem.
    """

    path: Path | None = None
    url: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def is_local(self) -> bool:
        return self.path is not None

    @property
    def is_stdio(self) -> bool:
        return self.path is None and self.url is None

    @property
    def is_url(self) -> bool:
        return self.url is not None

    @property
    def scheme(self) -> str:
        """The URL's (innermost) protocol, ``s3`` for ``simplecache::s3://``; "" otherwise."""
        if self.url is None:
            return ""
        return self.url.split("://", 1)[0].rsplit("::", 1)[-1].lower()

    @property
    def display(self) -> str:
        """What messages and results show: the path, ``-``, or the URL without credentials."""
        if self.path is not None:
            return str(self.path)
        if self.url is None:
            return STDIO
        return redact_url(self.url)

    @property
    def reported(self) -> Path | str:
        """What a result reports as written or read: the local path, else :attr:`display`."""
        return self.path if self.path is not None else self.display

    def __str__(self) -> str:
        return self.display

    def secrets(self) -> Iterator[str]:
        """Every credential this location carries: the URL's user information and query
        values, and the storage options' secret values."""
        if self.url is not None:
            for part in self.url.split("::"):
                parts = urlsplit(part)
                if "@" in parts.netloc:
                    userinfo = parts.netloc.rpartition("@")[0]
                    yield userinfo
                    yield from (unquote(v) for v in userinfo.split(":"))
                if parts.query:
                    yield parts.query
                    for pair in parts.query.split("&"):
                        value = pair.partition("=")[2]
                        yield value
                        yield unquote(value)
        yield from _secret_values(self.options, secret=False)

    def scrub(self, text: str) -> str:
        """``text`` with the URL shown as :attr:`display` and every secret replaced."""
        if self.url is not None:
            text = text.replace(self.url, self.display)
        for secret in sorted(set(self.secrets()), key=len, reverse=True):
            if len(secret) >= _MIN_SECRET_LENGTH:
                text = text.replace(secret, _REDACTED)
        return text

    def same_as(self, other: Location) -> bool:
        """Whether both name the same bundle (the same file, or the same URL)."""
        if self.path is not None and other.path is not None:
            try:
                return self.path.samefile(other.path)
            except OSError:
                return self.path.absolute() == other.path.absolute()
        return self.url is not None and self.url == other.url


def _secret_values(options: Mapping[str, Any], *, secret: bool) -> Iterator[str]:
    for name, value in options.items():
        named_secret = secret or any(word in str(name).lower() for word in _SECRET_NAMES)
        if isinstance(value, Mapping):
            yield from _secret_values(value, secret=named_secret)
        elif named_secret and isinstance(value, str | bytes):
            text = value if isinstance(value, str) else value.decode("utf-8", "replace")
            yield text
            yield from _CONNECTION_STRING_SECRETS.findall(text)


def redact_url(url: str) -> str:
    """``url`` without user information, and with every query value replaced (presigned URLs
    carry their signature and credential there)."""
    redacted = []
    for part in url.split("::"):
        parts = urlsplit(part)
        if "@" not in parts.netloc and not parts.query:
            redacted.append(part)  # nothing to hide: kept as given (urlunsplit drops "//")
            continue
        netloc = parts.netloc.rpartition("@")[2]
        query = "&".join(
            f"{pair.partition('=')[0]}={_REDACTED}" if "=" in pair else pair
            for pair in parts.query.split("&")
            if pair
        )
        redacted.append(urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment)))
    return "::".join(redacted)


def parse_location(
    value: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
) -> Location:
    """What ``value`` names (the rules in the module docstring). ``storage_options`` go with a
    URL; a local path or ``-`` ignores them."""
    options = dict(storage_options or {})
    if not isinstance(value, str):
        return Location(path=Path(value))
    if value == STDIO:
        return Location()
    if _SCHEME.match(value):
        if value.lower().startswith("file://"):
            local = urlsplit(value)
            if local.netloc not in ("", "localhost"):
                raise UsageError(
                    f"a file:// URL must name a local file: {redact_url(value)!r}",
                    hint="write file:///absolute/path (three slashes)",
                )
            return Location(path=Path(unquote(local.path)))
        return Location(url=value, options=options)
    if not value:
        raise UsageError("the bundle path is empty", hint="name a .kbundle file, a URL or -")
    return Location(path=Path(value))


def parse_storage_options(pairs: tuple[str, ...] | list[str]) -> dict[str, Any]:
    """``--storage-option KEY=VALUE`` values as keyword arguments for the filesystem.

    A VALUE that is valid JSON is read as JSON (``true``, ``3``, ``{"region_name": ...}``),
    anything else as a string; quote a number to keep it a string (``key='"123"'``).
    """
    import json

    options: dict[str, Any] = {}
    for pair in pairs:
        name, sep, text = pair.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier():
            shown = name if sep else pair
            raise UsageError(
                f"--storage-option must be KEY=VALUE with KEY a name: {shown!r}",
                hint="e.g. --storage-option endpoint_url=http://127.0.0.1:9000",
            )
        try:
            options[name] = json.loads(text)
        except ValueError:
            options[name] = text
    return options
