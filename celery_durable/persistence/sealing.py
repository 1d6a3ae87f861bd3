"""States and outputs at rest: plain canonical JSON, compressed past a size, encrypted when
keys are set.

Checksums are taken over the plain JSON, before sealing and after opening, so a row verifies
the same however it was stored, and compression or a key rotation never changes one. What a
column holds tells how to open it, so rows written under other settings stay readable:

- canonical JSON as is (it never starts with ``z:`` or ``e:``);
- ``z:`` + base64 of the zlib-compressed JSON;
- ``e:<key id>:`` + base64 of a 12-byte nonce and the AES-256-GCM ciphertext of one flag byte
  (``z`` compressed, ``j`` plain) and the JSON, with the execution id as associated data, so a
  sealed value copied onto another run does not open.

zlib, not zstd: it is in the standard library, so no worker needs another wheel, and at level
6 it shrank bench/growth.py's states 5.9x; a state past ``compress_over`` is rare enough that zstd's
speed would not show. Only states and outputs are sealed: cursors, metadata and errors are
what operations and the web view read, and they carry the engine's data, not the user's.
"""

from __future__ import annotations

import base64
import binascii
import os
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING

from celery_durable.errors import ConfigurationError, EncryptionKeyMissing
from celery_durable.persistence.codec import Signer

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

COMPRESSED = "z:"
ENCRYPTED = "e:"
NONCE_BYTES = 12
KEY_BYTES = 32
LEVEL = 6


class Unsealable(ValueError):
    """A stored value that does not open: changed outside celery-durable (the caller names
    the row), not a missing key, which is EncryptionKeyMissing."""


class Sealer:
    """Seals and opens the state and output columns, per the settings; ``signer`` makes and
    checks the checksums taken over what it opens."""

    def __init__(
        self,
        compress_over: int = 0,
        keys: Mapping[str, str] | None = None,
        active: str | None = None,
        signer: Signer | None = None,
    ) -> None:
        self.compress_over = compress_over
        self.signer = signer or Signer()
        self._ciphers = {key_id: _cipher(key_id, key) for key_id, key in (keys or {}).items()}
        if active is None and len(self._ciphers) > 1:
            raise ConfigurationError(
                "encryption_keys holds several keys: name the one that encrypts new rows with "
                "encryption_key (CELERY_DURABLE_ENCRYPTION_KEY); the others stay readable."
            )
        if active is not None and active not in self._ciphers:
            raise ConfigurationError(
                f"encryption_key={active!r} is not one of encryption_keys "
                f"({', '.join(sorted(self._ciphers)) or 'none'}): add it there."
            )
        self.active = active if active is not None else next(iter(self._ciphers), None)

    def seal(self, text: str, execution_id: str) -> str:
        compress = 0 < self.compress_over < len(text)
        if not (compress or self.active):
            return text  # the hot path: a small state, no keys
        data = text.encode()
        if compress:
            data = zlib.compress(data, LEVEL)
        if self.active is None:
            return COMPRESSED + _b64(data)
        nonce = os.urandom(NONCE_BYTES)
        flagged = (b"z" if compress else b"j") + data
        sealed = self._ciphers[self.active].encrypt(nonce, flagged, execution_id.encode())
        return f"{ENCRYPTED}{self.active}:{_b64(nonce + sealed)}"

    def open(self, stored: str, execution_id: str) -> str:
        head = stored[:2]
        if head == COMPRESSED:
            return _inflate(_unb64(stored[2:]))
        if head != ENCRYPTED:
            return stored
        key_id, _, body = stored[2:].partition(":")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise EncryptionKeyMissing(key_id, self._ciphers)
        raw = _unb64(body)
        from cryptography.exceptions import InvalidTag

        try:
            flagged = cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], execution_id.encode())
        except InvalidTag as exc:
            raise Unsealable("the ciphertext does not authenticate") from exc
        if flagged[:1] == b"z":
            return _inflate(flagged[1:])
        return flagged[1:].decode()


def _cipher(key_id: str, key: str) -> AESGCM:
    if not key_id or ":" in key_id:
        raise ConfigurationError(
            f"Encryption key id {key_id!r}: use a non-empty name without ':' (it is stored with "
            "each row)."
        )
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != KEY_BYTES:
        raise ConfigurationError(
            f"Encryption key {key_id!r} must be {KEY_BYTES} bytes in base64 (AES-256-GCM); make "
            "one with: openssl rand -base64 32"
        )
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as exc:
        raise ConfigurationError(
            "encryption_keys needs the cryptography package: pip install "
            "'celery-durable[encryption]'."
        ) from exc
    return AESGCM(raw)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise Unsealable("not valid base64") from exc


def _inflate(data: bytes) -> str:
    try:
        return zlib.decompress(data).decode()
    except (zlib.error, UnicodeDecodeError) as exc:
        raise Unsealable("does not decompress") from exc
