"""Signing keys: generating Ed25519 key pairs, reading key files, fingerprints, trusted keys.

A key pair is two files. The private key (``NAME.key``) is PEM PKCS#8, encrypted with a
passphrase when one is given, and created with mode 0600; the public key (``NAME.pub``) is
PEM SubjectPublicKeyInfo, mode 0644. OpenSSH one-line public keys (``ssh-ed25519 AAAA...``)
are read too. A key is named by its *fingerprint*, ``sha256:`` and the hex SHA-256 of the
32 raw public-key bytes; the same string is the ``key_id`` in a bundle's signature member.

The *trusted keys* are every ``*.pub`` file in one directory: ``$KBUNDLE_TRUSTED_KEYS`` when
set, else ``$XDG_CONFIG_HOME/kbundle/trusted-keys`` (``~/.config/kbundle/trusted-keys``;
``%APPDATA%\\kbundle\\trusted-keys`` on Windows). Adding a key there lets bundles it signed run
their code, so a directory or key file that others may write to is refused.

The ``cryptography`` package (the ``kbundle[signing]`` extra) is imported only when a key is
made, read or used; fingerprints of signatures already in a bundle need nothing but hashlib.
Stable: the file formats and fingerprints are public; the functions are public API.
"""

from __future__ import annotations

import os
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from kbundle.container.signature_member import (
    KEY_ALGORITHM,
    fingerprint,
)
from kbundle.errors import UsageError
from kbundle.storage.atomic import atomic_file, check_destination

__all__ = [
    "KEY_ALGORITHM",
    "PASSPHRASE_ENV",
    "PRIVATE_KEY_SUFFIX",
    "PUBLIC_KEY_SUFFIX",
    "TRUSTED_KEYS_ENV",
    "GeneratedKey",
    "PublicKey",
    "SigningKey",
    "fingerprint",
    "generate_key",
    "is_encrypted_key",
    "key_paths",
    "load_public_key",
    "load_signing_key",
    "load_trusted_keys",
    "read_passphrase",
    "signing_available",
    "trusted_keys_directory",
]

PRIVATE_KEY_SUFFIX = ".key"
PUBLIC_KEY_SUFFIX = ".pub"
PASSPHRASE_ENV = "KBUNDLE_KEY_PASSPHRASE"
TRUSTED_KEYS_ENV = "KBUNDLE_TRUSTED_KEYS"
INSTALL_HINT = "install it with: pip install 'kbundle[signing]'"

# A PEM or OpenSSH key file is well under 1 KiB; anything far larger is not a key, and reading
# it whole would be a way to make kbundle allocate whatever a hostile file holds.
_MAX_KEY_FILE_BYTES = 64 * 1024
# A passphrase file holds one line; the bound only stops a wrong path (a model) being slurped.
_MAX_PASSPHRASE_BYTES = 4096
_ENCRYPTED_PEM = b"-----BEGIN ENCRYPTED PRIVATE KEY-----"
# Group- or world-writable: someone else could add a key and so make their code trusted.
_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


def _crypto() -> SimpleNamespace:
    """The parts of ``cryptography`` kbundle uses, imported on first need."""
    try:
        from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:
        raise UsageError(
            "signing keys need the 'cryptography' package, which is not installed",
            hint=INSTALL_HINT,
        ) from None
    return SimpleNamespace(
        ed25519=ed25519,
        serialization=serialization,
        InvalidSignature=InvalidSignature,
        UnsupportedAlgorithm=UnsupportedAlgorithm,
    )


def signing_available() -> bool:
    """True when the ``cryptography`` package is installed, so signatures can be checked."""
    try:
        _crypto()
    except UsageError:
        return False
    return True


@dataclass(frozen=True, kw_only=True, slots=True)
class PublicKey:
    """An Ed25519 public key: its raw bytes and where it came from (a path, for messages)."""

    raw: bytes
    source: str = ""

    @property
    def key_id(self) -> str:
        return fingerprint(self.raw)

    def verifies(self, signature: bytes, message: bytes) -> bool:
        """True when ``signature`` is this key's Ed25519 signature of ``message``."""
        crypto = _crypto()
        key = crypto.ed25519.Ed25519PublicKey.from_public_bytes(self.raw)
        try:
            key.verify(signature, message)
        except crypto.InvalidSignature:
            return False
        return True


@dataclass(frozen=True, kw_only=True, slots=True)
class SigningKey:
    """An Ed25519 private key, ready to sign, with its public half."""

    public: PublicKey
    _private: Any = field(repr=False)

    @property
    def key_id(self) -> str:
        return self.public.key_id

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        return bytes(self._private.sign(message))


@dataclass(frozen=True, kw_only=True, slots=True)
class GeneratedKey:
    """What :func:`generate_key` wrote."""

    private_path: Path
    public_path: Path
    key_id: str
    encrypted: bool

    def to_dict(self) -> dict[str, Any]:
        """The ``kbundle keygen --json`` shape."""
        return {
            "ok": True,
            "private_key": str(self.private_path),
            "public_key": str(self.public_path),
            "key_id": self.key_id,
            "encrypted": self.encrypted,
        }


def _raw_public(key: Any) -> bytes:
    serialization = _crypto().serialization
    return bytes(key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def key_paths(name: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``NAME.key`` and ``NAME.pub`` for ``NAME`` (a trailing ``.key`` or ``.pub`` is dropped)."""
    base = Path(name)
    if base.suffix in (PRIVATE_KEY_SUFFIX, PUBLIC_KEY_SUFFIX):
        base = base.with_suffix("")
    return base.with_name(base.name + PRIVATE_KEY_SUFFIX), base.with_name(
        base.name + PUBLIC_KEY_SUFFIX
    )


def generate_key(
    name: str | os.PathLike[str], *, passphrase: bytes | None = None, force: bool = False
) -> GeneratedKey:
    """Make a new Ed25519 key pair: ``NAME.key`` (private, 0600) and ``NAME.pub`` (0644).

    The private key is encrypted with ``passphrase`` when one is given. Neither file is
    replaced unless ``force``; each appears complete or not at all.
    """
    private_path, public_path = key_paths(name)
    for path, what in ((private_path, "private key"), (public_path, "public key")):
        check_destination(path, force=force, what=what)
        if path.is_dir():
            raise UsageError(
                f"{path} is a directory", hint="name a file for the key, e.g. -o release"
            )
    if passphrase is not None and not passphrase:
        passphrase = None
    crypto = _crypto()
    serialization = crypto.serialization
    private = crypto.ed25519.Ed25519PrivateKey.generate()
    encryption = (
        serialization.BestAvailableEncryption(passphrase)
        if passphrase
        else serialization.NoEncryption()
    )
    private_pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    with atomic_file(private_path, force=force, mode=0o600, what="private key") as handle:
        handle.write(private_pem)
    with atomic_file(public_path, force=force, mode=0o644, what="public key") as handle:
        handle.write(public_pem)
    return GeneratedKey(
        private_path=private_path,
        public_path=public_path,
        key_id=fingerprint(_raw_public(private.public_key())),
        encrypted=passphrase is not None,
    )


def _read_key_file(path: Path, what: str) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_KEY_FILE_BYTES + 1)
    except FileNotFoundError:
        raise UsageError(
            f"{what} {path} does not exist",
            hint="check the path, or make one with 'kbundle keygen'",
        ) from None
    except IsADirectoryError:
        raise UsageError(f"{what} {path} is a directory", hint=f"pass the {what} file") from None
    except OSError as exc:
        raise UsageError(
            f"cannot read {what} {path}: {exc.strerror}", hint="check the path and its permissions"
        ) from None
    if len(data) > _MAX_KEY_FILE_BYTES:
        raise UsageError(
            f"{what} {path} is larger than {_MAX_KEY_FILE_BYTES} bytes; it is not a key",
            hint="check the path",
        )
    return data


def is_encrypted_key(path: str | os.PathLike[str]) -> bool:
    """True when the private key file at ``path`` needs a passphrase."""
    return _read_key_file(Path(path), "private key").lstrip().startswith(_ENCRYPTED_PEM)


def load_signing_key(
    path: str | os.PathLike[str], *, passphrase: bytes | None = None
) -> SigningKey:
    """Read an Ed25519 private key written by ``kbundle keygen`` (PEM PKCS#8).

    ``passphrase`` is used only when the key is encrypted; an encrypted key without one, or
    with a wrong one, is refused with a message saying so.
    """
    key_path = Path(path)
    data = _read_key_file(key_path, "private key")
    encrypted = data.lstrip().startswith(_ENCRYPTED_PEM)
    if encrypted and not passphrase:
        raise UsageError(
            f"private key {key_path} is protected by a passphrase and none was given",
            hint=f"pass --passphrase-file FILE or set {PASSPHRASE_ENV}",
        )
    crypto = _crypto()
    try:
        private = crypto.serialization.load_pem_private_key(data, passphrase if encrypted else None)
    except ValueError:
        if encrypted:
            raise UsageError(
                f"private key {key_path} could not be decrypted: wrong passphrase",
                hint=f"check --passphrase-file or {PASSPHRASE_ENV}",
            ) from None
        raise UsageError(
            f"{key_path} is not a PEM private key",
            hint="pass the NAME.key file 'kbundle keygen' wrote",
        ) from None
    except (TypeError, crypto.UnsupportedAlgorithm):
        raise UsageError(
            f"{key_path} is not a usable private key",
            hint="pass the NAME.key file 'kbundle keygen' wrote",
        ) from None
    if not isinstance(private, crypto.ed25519.Ed25519PrivateKey):
        raise UsageError(
            f"private key {key_path} is not an Ed25519 key",
            hint="make an Ed25519 key with 'kbundle keygen'",
        )
    public = PublicKey(raw=_raw_public(private.public_key()), source=str(key_path))
    return SigningKey(public=public, _private=private)


def _parse_public_key(data: bytes, source: str) -> PublicKey:
    crypto = _crypto()
    serialization = crypto.serialization
    text = data.strip()
    try:
        if text.startswith(b"ssh-"):
            key = serialization.load_ssh_public_key(text)
        else:
            key = serialization.load_pem_public_key(text)
    except (ValueError, TypeError):
        raise UsageError(
            f"public key {source} is not a PEM or OpenSSH public key",
            hint="pass the NAME.pub file 'kbundle keygen' wrote",
        ) from None
    except crypto.UnsupportedAlgorithm:
        raise UsageError(
            f"public key {source} is of a kind cryptography cannot read",
            hint="pass an Ed25519 key from 'kbundle keygen'",
        ) from None
    if not isinstance(key, crypto.ed25519.Ed25519PublicKey):
        raise UsageError(
            f"public key {source} is not an Ed25519 key",
            hint="kbundle signs with Ed25519 only; make a key with 'kbundle keygen'",
        )
    return PublicKey(raw=_raw_public(key), source=source)


def load_public_key(path: str | os.PathLike[str]) -> PublicKey:
    """Read an Ed25519 public key file (PEM SubjectPublicKeyInfo or ``ssh-ed25519 ...``)."""
    key_path = Path(path)
    return _parse_public_key(_read_key_file(key_path, "public key"), str(key_path))


def trusted_keys_directory() -> Path:
    """Where trusted public keys live: ``$KBUNDLE_TRUSTED_KEYS`` or the per-user default."""
    configured = os.environ.get(TRUSTED_KEYS_ENV)
    if configured:
        return Path(configured).expanduser()
    if sys.platform == "win32" and os.environ.get("APPDATA"):
        return Path(os.environ["APPDATA"]) / "kbundle" / "trusted-keys"
    xdg = os.environ.get("XDG_CONFIG_HOME")
    base = Path(xdg) if xdg and Path(xdg).is_absolute() else Path.home() / ".config"
    return base / "kbundle" / "trusted-keys"


def _refuse_if_others_can_write(path: Path, what: str) -> None:
    if os.name != "posix":
        return
    mode = path.stat().st_mode
    if mode & _WRITABLE_BY_OTHERS:
        raise UsageError(
            f"{what} {path} can be written by other users (mode {stat.S_IMODE(mode):04o}), so it "
            "cannot decide what is trusted",
            hint=f"run: chmod go-w {path}",
        )


def load_trusted_keys(directory: str | os.PathLike[str] | None = None) -> tuple[PublicKey, ...]:
    """Every ``*.pub`` key in the trusted-keys directory (``trusted_keys_directory()`` if None).

    A missing default directory trusts nobody; a directory named by ``KBUNDLE_TRUSTED_KEYS``
    (or passed in) must exist. Unreadable or non-Ed25519 key files are refused, not skipped:
    a trust store that silently loses keys is hard to debug.
    """
    explicit = directory is not None or bool(os.environ.get(TRUSTED_KEYS_ENV))
    folder = Path(directory) if directory is not None else trusted_keys_directory()
    if not folder.is_dir():
        if explicit:
            raise UsageError(
                f"trusted keys directory {folder} does not exist",
                hint=f"create it, or point {TRUSTED_KEYS_ENV} at the directory of *.pub keys",
            )
        return ()
    _refuse_if_others_can_write(folder, "trusted keys directory")
    keys = []
    for path in sorted(folder.glob("*" + PUBLIC_KEY_SUFFIX)):
        if not path.is_file():
            continue
        _refuse_if_others_can_write(path, "trusted key")
        keys.append(load_public_key(path))
    return tuple(keys)


def read_passphrase(passphrase_file: str | os.PathLike[str] | None) -> bytes | None:
    """A passphrase from ``passphrase_file`` (its first line) or ``$KBUNDLE_KEY_PASSPHRASE``.

    Returns ``None`` when neither is given; the CLI may then prompt on a terminal. A
    passphrase is never taken from a command-line value, which other users can see.
    """
    if passphrase_file is not None:
        path = Path(passphrase_file)
        try:
            with path.open("rb") as handle:
                data = handle.read(_MAX_PASSPHRASE_BYTES + 1)
        except OSError as exc:
            raise UsageError(
                f"cannot read passphrase file {path}: {exc.strerror}",
                hint="check --passphrase-file",
            ) from None
        if len(data) > _MAX_PASSPHRASE_BYTES:
            raise UsageError(
                f"passphrase file {path} is larger than {_MAX_PASSPHRASE_BYTES} bytes",
                hint="check --passphrase-file",
            )
        line = data.splitlines()[0] if data.strip(b"\r\n") else b""
        if not line:
            raise UsageError(
                f"passphrase file {path} is empty", hint="write the passphrase on its first line"
            )
        return line
    from_env = os.environ.get(PASSPHRASE_ENV)
    return from_env.encode("utf-8") if from_env else None
