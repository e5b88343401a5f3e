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
    StartRollout(toml, note) propose a release from a routing config (TOML text: tiers,
                         aliases, tasks, classifier, policy) and start its rollout at the first
                         stage; ``emergency=True`` applies it to 100% at once (typed
                         confirmation and a reason)
    EditTier(tier, mapping, note) the same, for one tier's mapping changed from the baseline's
    Advance(override)    move the rollout to its next stage (the last promotes the candidate to
                         baseline); resumes a halted rollout at its stage. Needs passing gates,
                         or ``override=True`` with a reason
    Rollback()           end the rollout: every request goes back to the baseline
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


@dataclass(frozen=True, slots=True)
class StartRollout:
    toml: str
    """The candidate's routing as TOML: a whole config file or just some of its routing
    sections (``tiers``, ``aliases``, ``tasks``, ``classifier``, ``policy``). A section in the
    file replaces the baseline's whole section; one it leaves out stays as the baseline has it.
    Other sections are not part of a release and are not used."""
    note: str = ""
    emergency: bool = False
    source: str = "api"
    """Where it was made, for the release record: ``file``, ``console`` or ``api``."""


@dataclass(frozen=True, slots=True)
class EditTier:
    tier: str
    mapping: str
    """``a > b=3 + c=1 > d``: steps in fallback order separated by ``>``; a weighted step's
    deployments joined by ``+``, each with an optional ``=weight`` (default 1)."""
    note: str = ""
    emergency: bool = False


@dataclass(frozen=True, slots=True)
class Advance:
    override: bool = False
    """Advance although a gate fails or waits for data (needs a reason)."""


@dataclass(frozen=True, slots=True)
class Rollback:
    pass


Command = Drain | Undrain | SetSafeMode | Drill | StartRollout | EditTier | Advance | Rollback
OperatorCommand = Drain | Undrain | SetSafeMode | Drill
RolloutCommand = StartRollout | EditTier | Advance | Rollback


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
    """What the operator must type to confirm: a target whose drain strands ``stranded_tiers``,
    or the word for an emergency change or a gate override (``stranded_tiers`` empty)."""
    needs_reason: bool = False
    """The command is refused without a reason (an emergency change, an override)."""


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
        case StartRollout():
            return "rollout_start"
        case EditTier():
            return "edit_tier"
        case Advance():
            return "advance"
        case Rollback():
            return "rollback"


def command_to_dict(command: Command) -> dict[str, Any]:
    match command:
        case Drain(target) | Undrain(target):
            return {"command": command_name(command), "target": target}
        case SetSafeMode(on):
            return {"command": "safe_mode", "on": on}
        case Drill(provider, kind):
            return {"command": "drill", "provider": provider, "kind": kind}
        case StartRollout(toml, note, emergency, source):
            return {
                "command": "rollout_start",
                "toml": toml,
                "note": note,
                "emergency": emergency,
                "source": source,
            }
        case EditTier(tier, mapping, note, emergency):
            return {
                "command": "edit_tier",
                "tier": tier,
                "mapping": mapping,
                "note": note,
                "emergency": emergency,
            }
        case Advance(override):
            return {"command": "advance", "override": override}
        case Rollback():
            return {"command": "rollback"}


def command_from_dict(data: Any) -> Command:
    """Decode the admin API's JSON form; raises `CommandError` with what is wrong."""
    if not isinstance(data, dict) or not isinstance(data.get("command"), str):
        raise CommandError(
            'send a JSON object like {"command": "drain", "target": "sim-fast"}; commands: '
            + COMMAND_NAMES
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
    if name in ("rollout_start", "edit_tier"):
        note = data.get("note", "")
        emergency = data.get("emergency", False)
        if not isinstance(note, str):
            raise CommandError(f"{name} takes 'note' as a string")
        if not isinstance(emergency, bool):
            raise CommandError(f"{name} takes 'emergency' as true or false")
        if name == "edit_tier":
            return EditTier(text("tier"), text("mapping"), note, emergency)
        source = data.get("source", "api")
        if source not in ("file", "console", "api"):
            raise CommandError("rollout_start takes 'source' as one of file, console, api")
        return StartRollout(text("toml"), note, emergency, source)
    if name == "advance":
        override = data.get("override", False)
        if not isinstance(override, bool):
            raise CommandError('advance takes "override": true or false')
        return Advance(override)
    if name == "rollback":
        return Rollback()
    raise CommandError(f"unknown command {name!r}; commands: {COMMAND_NAMES}")


COMMAND_NAMES = "drain, undrain, safe_mode, drill, rollout_start, edit_tier, advance, rollback"
