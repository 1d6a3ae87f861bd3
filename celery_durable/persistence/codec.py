"""Canonical JSON and checksums: the one place bytes for the database are made."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from collections.abc import Mapping
from typing import Any

from celery_durable.errors import ChecksumKeyMissing, ConfigurationError, NotJSONSerializable


def dumps(value: Any, what: str = "The value") -> str:
    """Canonical JSON: sorted keys, no whitespace, so equal values give equal text and hash."""
    try:
        return json.dumps(
            value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise NotJSONSerializable(what, str(exc)) from exc


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


# A keyed checksum: "h:<key id>:" and HMAC-SHA-256 in hex, cut to fill the 64-character
# columns an unkeyed SHA-256 fills (at least 216 bits with the longest key id).
KEYED = "h:"
WIDTH = 64
MAX_KEY_ID = 8
MIN_SECRET = 16


def checkpoint_parts(
    execution_id: str,
    seq: int,
    kind: str,
    node: str,
    visit: int,
    state: str,
    cursor: str,
    output: str | None,
    meta: str | None,
) -> tuple[str, ...]:
    """What a checkpoint's checksum covers: its identity and canonical JSON columns, as stored."""
    return (execution_id, str(seq), kind, node, str(visit), state, cursor, output or "", meta or "")


def row_parts(
    execution_id: str, version: int, status: str, state: str, cursor: str, error: str | None
) -> tuple[str, ...]:
    """What an execution row's checksum covers: what resume, retry and restart decide with
    (version, status, state, cursor, error), not a checkpoint."""
    return (execution_id, str(version), status, state, cursor, error or "")


class Signer:
    """Makes and checks checksums. Unkeyed (SHA-256) they catch what changed by accident or
    by hand; anyone who can write the tables can also recompute them. With ``keys`` (key id
    -> secret) they are HMAC-SHA-256 under the ``active`` one, naming it, which only a holder
    of the key can make; the other keys still check what they signed (a rotation), and an
    unkeyed checksum no longer passes unless ``accept_unkeyed`` (while ``sign_checksums``
    re-signs what was written before the keys were set)."""

    def __init__(
        self,
        keys: Mapping[str, str] | None = None,
        active: str | None = None,
        *,
        accept_unkeyed: bool = False,
    ) -> None:
        self._keys = {key_id: _secret(key_id, key) for key_id, key in (keys or {}).items()}
        if active is None and len(self._keys) > 1:
            raise ConfigurationError(
                "checksum_keys holds several keys: name the one that signs new rows with "
                "checksum_key (CELERY_DURABLE_CHECKSUM_KEY); the others still check theirs."
            )
        if active is not None and active not in self._keys:
            raise ConfigurationError(
                f"checksum_key={active!r} is not one of checksum_keys "
                f"({', '.join(sorted(self._keys)) or 'none'}): add it there."
            )
        self.active = active if active is not None else next(iter(self._keys), None)
        self.accept_unkeyed = accept_unkeyed or self.active is None

    def sign(self, parts: tuple[str, ...]) -> str:
        if self.active is None:
            return _sha256(parts)
        return self._keyed(self.active, parts)

    def matches(self, parts: tuple[str, ...], stored: str | None) -> bool:
        """Whether ``stored`` is a checksum of ``parts`` this signer trusts; no checksum at
        all never is."""
        if stored is None:
            return False
        if stored.startswith(KEYED):
            key_id = stored[len(KEYED) :].partition(":")[0]
            if key_id not in self._keys:
                raise ChecksumKeyMissing(key_id, self._keys)
            return hmac.compare_digest(self._keyed(key_id, parts), stored)
        return self.accept_unkeyed and hmac.compare_digest(_sha256(parts), stored)

    def is_current(self, stored: str | None) -> bool:
        """Whether ``stored`` is signed the way this signer signs now: nothing to re-sign."""
        if stored is None:
            return False
        if self.active is None:
            return not stored.startswith(KEYED)
        return stored.startswith(f"{KEYED}{self.active}:")

    def trusting_unkeyed(self) -> Signer:
        """This signer, trusting unkeyed checksums as well: what re-signing checks with."""
        trusting = copy.copy(self)
        trusting.accept_unkeyed = True
        return trusting

    def _keyed(self, key_id: str, parts: tuple[str, ...]) -> str:
        head = f"{KEYED}{key_id}:"
        mac = hmac.new(self._keys[key_id], digestmod=hashlib.sha256)
        for part in parts:
            mac.update(part.encode())
            mac.update(b"\x00")
        return head + mac.hexdigest()[: WIDTH - len(head)]


def _secret(key_id: str, key: str) -> bytes:
    if not key_id or ":" in key_id or len(key_id) > MAX_KEY_ID:
        raise ConfigurationError(
            f"Checksum key id {key_id!r}: use a name of 1 to {MAX_KEY_ID} characters without "
            "':' (it is stored with each checksum)."
        )
    if len(key) < MIN_SECRET:
        raise ConfigurationError(
            f"Checksum key {key_id!r} is shorter than {MIN_SECRET} characters; make one with: "
            "openssl rand -base64 32"
        )
    return key.encode()


def checksum(*parts: Any) -> str:
    """The unkeyed checksum of a checkpoint (``checkpoint_parts``' arguments)."""
    return _sha256(checkpoint_parts(*parts))


def _sha256(parts: tuple[str, ...]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\x00")
    return digest.hexdigest()
