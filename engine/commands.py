"""Operator commands: typed actions on a running engine, from any surface.

The console, the admin API and the CLI all act through these values. `Engine.preview` tells
what a command would do (the text a confirmation shows) without doing it; `Engine.submit`
does it: it validates, writes the audit entry (durably) *before* the change takes effect,
persists the new state so it survives a restart, applies it, and publishes a snapshot that
shows it.

    Drain(target)        take a provider (all its deployments) or one deployment out of routing
    Undrain(target)      put it back
    SetSafeMode(on)      send all traffic to the safe-mode tier (``[policy] safe_mode_tier``)
    Drill(provider, kind) break or heal a simulated provider, for incident drills: ``errors``
                         (an error storm), ``429`` (a rate-limit storm), ``latency`` (a spike),
                         ``hang`` (requests never answered) or ``heal``
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

DrillKind = Literal["errors", "429", "latency", "hang", "heal"]
DRILL_KINDS: tuple[DrillKind, ...] = ("errors", "429", "latency", "hang", "heal")


@dataclass(frozen=True, slots=True)
class Drain:
    target: str


@dataclass(frozen=True, slots=True)
class Undrain:
    target: str


@dataclass(frozen=True, slots=True)
class SetSafeMode:
    on: bool


@dataclass(frozen=True, slots=True)
class Drill:
    provider: str
    kind: DrillKind


Command = Drain | Undrain | SetSafeMode | Drill


@dataclass(frozen=True, slots=True)
class Effect:
    """What a command would do, computed from the engine's state when asked."""

    allowed: bool
    summary: str
    """One line for a confirmation: "drains sim-fast: tier low moves to local-llama"."""
    details: tuple[str, ...] = ()
    """One line per affected tier."""
    stranded_tiers: tuple[str, ...] = ()
    """Tiers that would be left with no healthy deployment: confirm by typing the target."""
    confirm_text: str | None = None
    """What the operator must type to confirm, when ``stranded_tiers`` is not empty."""


@dataclass(frozen=True, slots=True)
class CommandResult:
    ok: bool
    message: str
    audit_id: int | None = None


class CommandError(ValueError):
    """A command that cannot be decoded or does not apply; the message says why."""


def command_name(command: Command) -> str:
    match command:
        case Drain():
            return "drain"
        case Undrain():
            return "undrain"
        case SetSafeMode():
            return "safe_mode"
        case Drill():
            return "drill"


def command_to_dict(command: Command) -> dict[str, Any]:
    match command:
        case Drain(target) | Undrain(target):
            return {"command": command_name(command), "target": target}
        case SetSafeMode(on):
            return {"command": "safe_mode", "on": on}
        case Drill(provider, kind):
            return {"command": "drill", "provider": provider, "kind": kind}


def command_from_dict(data: Any) -> Command:
    """Decode the admin API's JSON form; raises `CommandError` with what is wrong."""
    if not isinstance(data, dict) or not isinstance(data.get("command"), str):
        raise CommandError(
            'send a JSON object like {"command": "drain", "target": "sim-fast"}; commands: '
            "drain, undrain, safe_mode, drill"
        )
    name = data["command"]

    def text(key: str) -> str:
        value = data.get(key)
        if not isinstance(value, str) or not value:
            raise CommandError(f"{name} needs {key!r}: a non-empty string")
        return value

    if name == "drain":
        return Drain(text("target"))
    if name == "undrain":
        return Undrain(text("target"))
    if name == "safe_mode":
        on = data.get("on")
        if not isinstance(on, bool):
            raise CommandError('safe_mode needs "on": true or false')
        return SetSafeMode(on)
    if name == "drill":
        kind = text("kind")
        for known in DRILL_KINDS:
            if kind == known:
                return Drill(text("provider"), known)
        raise CommandError(f"drill kind {kind!r} is unknown; use one of {', '.join(DRILL_KINDS)}")
    raise CommandError(f"unknown command {name!r}; commands: drain, undrain, safe_mode, drill")
