"""The seam the console (and the operator CLI) use to reach an engine: `EngineLink`.

Two implementations with the same behaviour:

- `LocalLink` wraps an `Engine` running in this process (programs and tests that embed one).
- `RemoteLink` talks to a ``routedeck serve`` through its admin API: it polls
  ``GET /admin/snapshot`` and sends ``POST /admin/preview`` and ``POST /admin/commands``
  (``routedeck`` and ``routedeck demo`` on their own engine process, ``console --attach URL``,
  and the ``drain``/``undrain``/``safe-mode`` CLI verbs).

Through a link a caller can only read snapshots, preview a command and submit it; nothing else
of the engine is reachable, so the console cannot depend on engine internals.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Protocol

import httpx

from engine.commands import Command, CommandResult, Effect, command_to_dict
from engine.engine import Engine
from engine.snapshot import Snapshot


class LinkError(Exception):
    """The engine could not be reached or refused the request; the message says why."""


class EngineLink(Protocol):
    @property
    def label(self) -> str:
        """Where the engine is: its listen address, or the URL attached to."""
        ...

    @property
    def attached(self) -> bool:
        """True for a remote engine reached through its admin API."""
        ...

    @property
    def last_error(self) -> str | None:
        """Why snapshots stopped arriving (a remote engine unreachable), or None."""
        ...

    def snapshots(self) -> AsyncIterator[Snapshot]:
        """Snapshots as they are published; a remote link yields nothing while unreachable."""
        ...

    async def preview(self, command: Command) -> Effect: ...

    async def submit(self, command: Command, *, actor: str, reason: str = "") -> CommandResult: ...

    async def close(self) -> None: ...


class LocalLink:
    attached = False
    last_error: str | None = None

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @property
    def label(self) -> str:
        return self._engine.listen or "embedded"

    def snapshots(self) -> AsyncIterator[Snapshot]:
        return self._engine.snapshots()

    async def preview(self, command: Command) -> Effect:
        return self._engine.preview(command)

    async def submit(self, command: Command, *, actor: str, reason: str = "") -> CommandResult:
        return await self._engine.submit(command, actor=actor, reason=reason)

    async def close(self) -> None:
        return None


def admin_headers(token: str | None) -> dict[str, str]:
    """The headers of a request to the admin API: the bearer token, when there is one."""
    return {"authorization": f"Bearer {token}"} if token else {}


def admin_error(response: httpx.Response) -> str | None:
    """The message of an admin API error answer (``{"error": {"message": ...}}``), or None
    when the body is not one (callers say ``HTTP <status>`` their own way)."""
    try:
        data = response.json()
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    return message if isinstance(message, str) and message else None


class RemoteLink:
    def __init__(
        self,
        url: str,
        *,
        token: str | None = None,
        poll_interval: float = 0.5,
        timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
        attached: bool = True,
    ) -> None:
        """``attached`` False: the engine is the console's own child process, not a remote
        engine someone else runs (the console shows ATTACHED only for the latter)."""
        self.label = url.rstrip("/")
        self.attached = attached
        self._client = httpx.AsyncClient(
            base_url=self.label, headers=admin_headers(token), timeout=timeout, transport=transport
        )
        self._poll_interval = poll_interval
        self.last_error: str | None = None
        """Why the last poll failed, or None while the engine answers."""

    async def _call(
        self, method: str, path: str, body: Any = None, *, accept: tuple[int, ...] = ()
    ) -> Any:
        try:
            response = await self._client.request(method, path, json=body)
        except httpx.HTTPError as exc:
            raise LinkError(f"cannot reach routedeck at {self.label}: {exc}") from None
        if response.status_code >= 400 and response.status_code not in accept:
            message = admin_error(response)
            raise LinkError(message or f"routedeck answered HTTP {response.status_code}")
        try:
            return response.json()
        except ValueError:
            return None

    async def fetch(self) -> Snapshot:
        return Snapshot.from_dict(await self._call("GET", "/admin/snapshot"))

    async def snapshots(self) -> AsyncIterator[Snapshot]:
        last = -1
        while True:
            try:
                snap = await self.fetch()
            except (LinkError, KeyError, TypeError) as exc:
                self.last_error = str(exc)
            else:
                self.last_error = None
                if snap.seq != last:
                    last = snap.seq
                    yield snap
            await asyncio.sleep(self._poll_interval)

    async def preview(self, command: Command) -> Effect:
        data = await self._call("POST", "/admin/preview", command_to_dict(command))
        return Effect(
            allowed=data["allowed"],
            summary=data["summary"],
            details=tuple(data["details"]),
            stranded_tiers=tuple(data["stranded_tiers"]),
            confirm_text=data["confirm_text"],
            needs_reason=bool(data.get("needs_reason", False)),
        )

    async def submit(self, command: Command, *, actor: str, reason: str = "") -> CommandResult:
        body = {**command_to_dict(command), "actor": actor, "reason": reason}
        # 409 is a refused command: a result to show, not a failure to reach the engine.
        data = await self._call("POST", "/admin/commands", body, accept=(409,))
        return CommandResult(ok=data["ok"], message=data["message"], audit_id=data["audit_id"])

    async def close(self) -> None:
        await self._client.aclose()
