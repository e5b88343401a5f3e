"""Tenants and their virtual API keys.

A virtual key is ``rd-`` followed by 40 random URL-safe characters. It is shown once, when it is
created; routedeck stores only its SHA-256 and its first characters (to tell keys apart), in
the ``api_keys`` table. `KeyRing` keeps every key's hash in memory, so resolving a request's
tenant is one dictionary lookup.

Resolution, for the key a request carries (``Authorization: Bearer`` or ``x-api-key``):

- an ``rd-`` key that is known and not revoked: its tenant;
- an ``rd-`` key that is unknown or revoked: refused (401), whatever the settings;
- no key, or one that is not a routedeck key (an SDK's placeholder, say): the tenant ``local``,
  unless ``[server] require_keys`` is on, in which case it is refused.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from state.store import Store

KEY_PREFIX = "rd-"
TENANT_LOCAL = "local"
"""The tenant of requests that carry no virtual key."""
_SHOWN = 10


class KeyRefused(Exception):
    """A key was refused; ``message`` says why and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    tenant: str
    name: str
    prefix: str
    created_at: float
    revoked_at: float | None


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyRing:
    def __init__(self, store: Store, *, require_keys: bool) -> None:
        self._store = store
        self._require = require_keys
        self._by_hash: dict[str, ApiKey] = {}

    async def load(self) -> None:
        rows = await self._store.query(
            "SELECT id, tenant, name, hash, prefix, created_at, revoked_at FROM api_keys"
        )
        self._by_hash = {
            row["hash"]: ApiKey(
                row["id"],
                row["tenant"],
                row["name"],
                row["prefix"],
                row["created_at"],
                row["revoked_at"],
            )
            for row in rows
        }

    def tenant_for(self, key: str | None) -> str:
        """The tenant a request belongs to; raises `KeyRefused` for a refused key."""
        if key and key.startswith(KEY_PREFIX):
            found = self._by_hash.get(_hash(key))
            if found is None:
                raise KeyRefused(
                    "Unknown routedeck key. Check the key, or create one with "
                    "`routedeck keys create --tenant NAME`."
                )
            if found.revoked_at is not None:
                raise KeyRefused(
                    f"This routedeck key ({found.prefix}…) was revoked. Ask for a new one."
                )
            return found.tenant
        if self._require:
            raise KeyRefused(
                "This routedeck requires a virtual key: send it as Authorization: Bearer rd-... "
                "(create one with `routedeck keys create --tenant NAME`)."
            )
        return TENANT_LOCAL

    async def create(self, tenant: str, name: str, *, now: float) -> tuple[str, ApiKey]:
        """A new key for ``tenant``: (the key itself, shown once; its stored record)."""
        key = KEY_PREFIX + secrets.token_urlsafe(30)
        record = ApiKey(
            id="key_" + secrets.token_hex(6),
            tenant=tenant,
            name=name,
            prefix=key[:_SHOWN],
            created_at=now,
            revoked_at=None,
        )
        await self._store.write(
            "INSERT INTO api_keys (id, tenant, name, hash, prefix, created_at, revoked_at) "
            "VALUES (?, ?, ?, ?, ?, ?, NULL)",
            (record.id, tenant, name, _hash(key), record.prefix, now),
        )
        await self._store.bump_state()  # other processes on this file reload their keys
        self._by_hash[_hash(key)] = record
        return key, record

    async def revoke(self, key_id: str, *, now: float) -> ApiKey | None:
        """Revoke a key by id; None when no such key exists. Revoking twice is harmless."""
        for digest, record in self._by_hash.items():
            if record.id == key_id:
                if record.revoked_at is None:
                    await self._store.write(
                        "UPDATE api_keys SET revoked_at = ? WHERE id = ?", (now, key_id)
                    )
                    await self._store.bump_state()
                    record = ApiKey(
                        record.id,
                        record.tenant,
                        record.name,
                        record.prefix,
                        record.created_at,
                        now,
                    )
                    self._by_hash[digest] = record
                return record
        return None

    def list_keys(self) -> list[ApiKey]:
        return sorted(self._by_hash.values(), key=lambda k: k.created_at)
