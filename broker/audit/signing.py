"""The audit trail's Ed25519 keys: the broker's private key, and the public keys it verifies with.

A key is named by its *key id*: the first 16 hex digits of the SHA-256 of its raw 32-byte
public key. Every record names the key that signed it, so a key can be rotated (configure a
new one; the old public keys stay in ``audit_keys`` and at ``GET /api/v1/audit/keys``) and
a reviewer can pin the public keys they trust, taken from somewhere other than the database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from broker.settings.key_file import read_private_file, write_private_file
from broker.settings.rules import SettingsError

__all__ = [
    "AuditKeyError",
    "AuditSigner",
    "PublicKeys",
    "key_id_of",
    "load_or_create_signer",
    "public_key_from_pem",
    "public_keys_from_pem",
]

KEY_ID_HEX: Final = 16


class AuditKeyError(ValueError):
    """A key (PEM) that cannot be read as an Ed25519 key."""


def key_id_of(public_key: Ed25519PublicKey) -> str:
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:KEY_ID_HEX]


def public_pem(public_key: Ed25519PublicKey) -> str:
    return public_key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


@dataclass(frozen=True)
class AuditSigner:
    """Signs chain hashes with the broker's private key (never shown, never logged)."""

    private_key: Ed25519PrivateKey

    @property
    def public_key(self) -> Ed25519PublicKey:
        return self.private_key.public_key()

    @property
    def key_id(self) -> str:
        return key_id_of(self.public_key)

    @property
    def public_pem(self) -> str:
        return public_pem(self.public_key)

    def sign(self, digest: bytes) -> str:
        """The signature of ``digest`` as 128 lowercase hex digits."""
        return self.private_key.sign(digest).hex()

    def __repr__(self) -> str:
        return f"AuditSigner(key_id={self.key_id!r})"

    @classmethod
    def generate(cls) -> AuditSigner:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_pem(cls, text: str) -> AuditSigner:
        """Raises AuditKeyError for anything but an unencrypted PKCS#8 Ed25519 private key."""
        try:
            key = serialization.load_pem_private_key(text.strip().encode("ascii"), password=None)
        except (ValueError, TypeError, UnicodeEncodeError) as exc:
            # Never the text itself: it is the key.
            raise AuditKeyError("not an unencrypted PEM private key") from exc
        if not isinstance(key, Ed25519PrivateKey):
            raise AuditKeyError("the private key is not an Ed25519 key")
        return cls(key)

    def private_pem(self) -> str:
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii")


def load_or_create_signer(configured: str | None, path: Path) -> AuditSigner:
    """The configured key, else the one in ``path`` (made 0600 on first start).

    Raises:
        SettingsError: the configured key or the file's is not an Ed25519 private key, or the
            file may have leaked (readable by others, another user's).
    """
    if configured is not None:
        try:
            return AuditSigner.from_pem(configured)
        except AuditKeyError as exc:
            raise SettingsError(f"BROKER_AUDIT_SIGNING_KEY: {exc}") from None
    stored = read_private_file(path)
    if stored:
        try:
            return AuditSigner.from_pem(stored)
        except AuditKeyError as exc:
            raise SettingsError(
                f"{path}: {exc}; delete it (a new key is made) or put the key back"
            ) from None
    signer = AuditSigner.generate()
    write_private_file(path, signer.private_pem())
    return signer


def public_key_from_pem(text: str) -> Ed25519PublicKey:
    """Raises AuditKeyError unless ``text`` is one PEM Ed25519 public key."""
    try:
        key = serialization.load_pem_public_key(text.strip().encode("ascii"))
    except (ValueError, TypeError, UnicodeEncodeError) as exc:
        raise AuditKeyError(f"not a PEM public key: {exc}") from exc
    if not isinstance(key, Ed25519PublicKey):
        raise AuditKeyError("the public key is not an Ed25519 key")
    return key


def public_keys_from_pem(text: str) -> list[Ed25519PublicKey]:
    """Every PEM public key in ``text`` (a file may hold several, one after another)."""
    marker = "-----END PUBLIC KEY-----"
    blocks = [b + marker for b in text.split(marker) if b.strip()]
    if not blocks:
        raise AuditKeyError("no PEM public key found")
    return [public_key_from_pem(block) for block in blocks]


class PublicKeys(Mapping[str, Ed25519PublicKey]):
    """The public keys a verifier trusts, by key id."""

    def __init__(self, keys: Iterable[Ed25519PublicKey] = ()) -> None:
        self._keys = {key_id_of(k): k for k in keys}

    def __getitem__(self, key_id: str) -> Ed25519PublicKey:
        return self._keys[key_id]

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def verifies(self, key_id: str, digest: bytes, signature: bytes) -> bool:
        key = self._keys.get(key_id)
        if key is None:
            return False
        try:
            key.verify(signature, digest)
        except InvalidSignature:
            return False
        return True
