"""What a bundle argument names, how it is shown without credentials, ``--storage-option``
values, and what reading a local bundle never imports."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_python

from kbundle.errors import UsageError
from kbundle.storage.locations import (
    Location,
    parse_location,
    parse_storage_options,
    redact_url,
)


@pytest.mark.parametrize(
    ("value", "path", "url"),
    [
        ("model.kbundle", Path("model.kbundle"), None),
        ("./s3:/b/m.kbundle", Path("s3:/b/m.kbundle"), None),
        ("file:///srv/m.kbundle", Path("/srv/m.kbundle"), None),
        ("file:///srv/a%20b.kbundle", Path("/srv/a b.kbundle"), None),
        ("s3://b/m.kbundle", None, "s3://b/m.kbundle"),
        ("gs://b/m.kbundle", None, "gs://b/m.kbundle"),
        ("https://h/m.kbundle", None, "https://h/m.kbundle"),
        ("simplecache::s3://b/m.kbundle", None, "simplecache::s3://b/m.kbundle"),
        ("C:\\models\\m.kbundle", Path("C:\\models\\m.kbundle"), None),
    ],
)
def test_what_a_bundle_argument_names(value: str, path: Path | None, url: str | None) -> None:
    location = parse_location(value)

    assert (location.path, location.url) == (path, url)


def test_dash_is_standard_input_or_output_and_a_path_object_is_always_a_path() -> None:
    assert parse_location("-").is_stdio
    assert parse_location(Path("-")).path == Path("-")
    assert parse_location("simplecache::s3://b/m").scheme == "s3"


def test_a_file_url_must_be_local() -> None:
    with pytest.raises(UsageError) as caught:
        parse_location("file://server/share/m.kbundle")

    assert str(caught.value) == (
        "a file:// URL must name a local file: 'file://server/share/m.kbundle'; "
        "write file:///absolute/path (three slashes)"
    )


def test_urls_are_shown_without_credentials() -> None:
    assert redact_url("https://u:p@h:8/m.kbundle?X-Amz-Signature=abc&versionId=3") == (
        "https://h:8/m.kbundle?X-Amz-Signature=<redacted>&versionId=<redacted>"
    )
    assert redact_url("s3://b/m.kbundle") == "s3://b/m.kbundle"
    assert redact_url("local:///tmp/m.kbundle") == "local:///tmp/m.kbundle"


def test_scrub_takes_every_secret_out_of_a_message() -> None:
    location = Location(
        url="https://user:pw-secret@h/m.kbundle?sig=sig%2Fsecret",
        options={"secret": "opt-secret", "client_kwargs": {"aws_session_token": "tok-secret"}},
    )
    text = (
        "GET https://user:pw-secret@h/m.kbundle?sig=sig%2Fsecret failed; key opt-secret, "
        "token tok-secret, signature sig/secret"
    )

    scrubbed = location.scrub(text)

    assert scrubbed == (
        "GET https://h/m.kbundle?sig=<redacted> failed; key <redacted>, token <redacted>, "
        "signature <redacted>"
    )


def test_scrub_takes_an_azure_connection_strings_key_out_whole_or_quoted_alone() -> None:
    connection = (
        "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey=c2VjcmV0LWtleQ==;"
        "EndpointSuffix=core.windows.net"
    )
    location = Location(url="az://c/m.kbundle", options={"connection_string": connection})

    scrubbed = location.scrub(f"bad {connection}; signing with c2VjcmV0LWtleQ== failed")

    assert scrubbed == "bad <redacted>; signing with <redacted> failed"


def test_storage_options_are_json_when_json() -> None:
    options = parse_storage_options(
        [
            "endpoint_url=http://127.0.0.1:9000",
            "anon=true",
            "max_concurrency=4",
            'client_kwargs={"region_name": "eu-west-1"}',
            'key="123"',
            "secret=a=b",
        ]
    )

    assert options == {
        "endpoint_url": "http://127.0.0.1:9000",
        "anon": True,
        "max_concurrency": 4,
        "client_kwargs": {"region_name": "eu-west-1"},
        "key": "123",
        "secret": "a=b",
    }


@pytest.mark.parametrize("pair", ["anon", "=x", "two words=x"])
def test_a_storage_option_must_be_key_equals_value(pair: str) -> None:
    with pytest.raises(UsageError) as caught:
        parse_storage_options([pair])

    assert caught.value.message.startswith("--storage-option must be KEY=VALUE")


def test_local_verification_never_imports_fsspec(bundle_file: Path) -> None:
    """``import kbundle`` and every command on local files stay as fast as before: fsspec
    is imported on the first URL only."""
    script = (
        "import sys, kbundle\n"
        "from kbundle.cli import main\n"
        "assert 'fsspec' not in sys.modules, 'import kbundle'\n"
        f"kbundle.verify({str(bundle_file)!r})\n"
        f"kbundle.inspect({str(bundle_file)!r})\n"
        "assert 'fsspec' not in sys.modules, 'verify'\n"
        "print('ok')\n"
    )

    done = run_python("-c", script)

    assert done.returncode == 0, done.stderr
    assert done.stdout == "ok\n"
