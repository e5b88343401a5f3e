"""Operator state — drains, safe mode, drills — and the commands that change it.

`Operator` is the single owner of that state. It computes a command's `Effect` from the live
health of every deployment (for confirmations), and applies commands in the order the design
requires: validate, write the audit entry durably, persist the new state (so it survives a
restart), then change the in-memory state that routing reads. Drains and safe mode are
persisted in the store's ``kv`` table under ``drains`` and ``safe_mode``; drills are not (they
act on the in-process simulator, which a restart resets).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

from engine.commands import (
    CommandResult,
    Drain,
    Drill,
    DrillKind,
    Effect,
    OperatorCommand,
    SetSafeMode,
    Undrain,
    command_name,
)
from engine.config import Config
from engine.snapshot import AuditView, DrillView, HealthState
from state.store import Store

KV_DRAINS = "drains"
KV_SAFE_MODE = "safe_mode"
AUDIT_TAIL = 50

# What each drill does to a simulated provider (see providers.sim.chaos for the knobs).
DRILL_KNOBS: Mapping[DrillKind, Mapping[str, Any]] = {
    "errors": {"error_rate": 0.8, "error_status": 500},
    "429": {"error_rate": 0.9, "error_status": 429, "retry_after": 2},
    "latency": {"extra_latency_ms": 1500.0},
    "hang": {"hang_rate": 1.0},
}
UNHEALTHY: frozenset[HealthState] = frozenset({"down", "drained"})

Chaos = Callable[[str, Mapping[str, Any] | None], None]
"""Sets (knobs) or clears (None) the simulator's chaos rule for a provider."""


class Operator:
    def __init__(self, config: Config, store: Store, *, chaos: Chaos | None) -> None:
        self._config = config
        self._store = store
        self._chaos = chaos
        self.drained: frozenset[str] = frozenset()
        self.safe_mode = False
        self.safe_tier = config.policy.safe_tier(config.tiers)
        self.drills: dict[str, DrillKind] = {}
        self.audit: deque[AuditView] = deque(maxlen=AUDIT_TAIL)

    def set_routing(self, config: Config) -> None:
        """A new baseline release: drain effects and safe mode follow its tiers from now on."""
        self._config = config
        self.safe_tier = config.policy.safe_tier(config.tiers)

    async def load(self) -> None:
        """Restore drains and safe mode from the store, forgetting names the config dropped."""
        known = set(self._config.providers) | set(self._config.deployments)
        drains = await self._store.kv_get(KV_DRAINS) or []
        self.drained = frozenset(d for d in drains if d in known)
        self.safe_mode = bool(await self._store.kv_get(KV_SAFE_MODE)) and self.safe_tier is not None
        self.audit.clear()
        for row in await self._store.fetch_audit(AUDIT_TAIL):  # oldest first
            self.audit.appendleft(_audit_view(row))

    # -- effects ---------------------------------------------------------------------------

    def _is_drained(self, deployment: str, drained: frozenset[str]) -> bool:
        return deployment in drained or self._config.deployments[deployment].provider in drained

    def _chains(self, drained: frozenset[str]) -> dict[str, tuple[str, ...]]:
        return {
            name: tuple(d for d in tier.names if not self._is_drained(d, drained))
            for name, tier in self._config.tiers.items()
        }

    def _routing_change(
        self, after: frozenset[str], health: Mapping[str, HealthState]
    ) -> tuple[list[str], list[str]]:
        """(one line per tier whose chain changes, tiers left without a healthy deployment)."""
        before_chains = self._chains(self.drained)
        after_chains = self._chains(after)
        details, stranded = [], []
        for tier, chain in after_chains.items():
            old = before_chains[tier]
            if chain == old:
                continue
            if not chain:
                details.append(f"tier {tier} has no deployment left: its requests will fail")
            elif not old or chain[0] != old[0]:
                details.append(f"tier {tier} moves to {chain[0]}")
            else:
                removed = [d for d in old if d not in chain]
                added = [d for d in chain if d not in old]
                if removed:
                    details.append(f"tier {tier} loses fallback {', '.join(removed)}")
                if added:
                    details.append(f"tier {tier} regains {', '.join(added)}")
            if not any(health.get(d, "idle") not in UNHEALTHY for d in chain):
                stranded.append(tier)
        return details, stranded

    def preview(self, command: OperatorCommand, health: Mapping[str, HealthState]) -> Effect:
        config = self._config
        match command:
            case Drain(target) | Undrain(target):
                verb = "drains" if isinstance(command, Drain) else "undrains"
                if target not in config.providers and target not in config.deployments:
                    known = ", ".join([*config.providers, *config.deployments])
                    return Effect(
                        False, f"{target!r} is not a provider or deployment; known: {known}"
                    )
                if isinstance(command, Drain) and target in self.drained:
                    return Effect(False, f"{target} is already drained")
                if isinstance(command, Undrain) and target not in self.drained:
                    return Effect(False, f"{target} is not drained")
                after = (
                    self.drained | {target}
                    if isinstance(command, Drain)
                    else self.drained - {target}
                )
                details, stranded = self._routing_change(after, health)
                if isinstance(command, Undrain):
                    stranded = []
                summary = f"{verb} {target}: " + ("; ".join(details) or "no tier routes through it")
                return Effect(
                    True,
                    summary,
                    tuple(details),
                    tuple(stranded),
                    confirm_text=target if stranded else None,
                )
            case SetSafeMode(on):
                if self.safe_tier is None:
                    return Effect(
                        False,
                        "safe mode needs a safe-mode tier: define [tiers.recovery] or set "
                        "[policy] safe_mode_tier",
                    )
                if on == self.safe_mode:
                    return Effect(False, f"safe mode is already {'on' if on else 'off'}")
                chain = self._chains(self.drained)[self.safe_tier]
                if on:
                    summary = (
                        f"safe mode on: every request goes to tier {self.safe_tier} "
                        f"({' > '.join(chain) or 'no deployment left'})"
                    )
                    stranded = (
                        [self.safe_tier]
                        if not any(health.get(d, "idle") not in UNHEALTHY for d in chain)
                        else []
                    )
                    return Effect(
                        True,
                        summary,
                        (),
                        tuple(stranded),
                        confirm_text="safe mode" if stranded else None,
                    )
                return Effect(True, "safe mode off: requests return to their own tiers")
            case Drill(provider, kind):
                if self._chaos is None:
                    return Effect(False, "drills need simulated providers (routedeck demo)")
                provider_config = config.providers.get(provider)
                if provider_config is None or provider_config.simulated is None:
                    simulated = [n for n, p in config.providers.items() if p.simulated is not None]
                    return Effect(
                        False,
                        f"{provider!r} is not a simulated provider; drills work on: "
                        f"{', '.join(simulated)}",
                    )
                if kind == "heal":
                    return Effect(True, f"heals {provider}: it answers normally again")
                return Effect(True, f"breaks {provider}: {_DRILL_TEXT[kind]}")

    # -- applying --------------------------------------------------------------------------

    async def submit(
        self,
        command: OperatorCommand,
        health: Mapping[str, HealthState],
        *,
        actor: str,
        reason: str,
        now: float,
    ) -> CommandResult:
        effect = self.preview(command, health)
        action = command_name(command)
        target = _target(command)
        if not effect.allowed:
            audit_id = await self._store.audit(
                actor, action, target, {"reason": reason, "summary": effect.summary}, "refused"
            )
            self.audit.appendleft(
                AuditView(audit_id, now, actor, action, target, "refused", effect.summary)
            )
            return CommandResult(False, effect.summary, audit_id)
        before = self._state()
        drained, safe_mode = self.drained, self.safe_mode
        match command:
            case Drain(t):
                drained = drained | {t}
            case Undrain(t):
                drained = drained - {t}
            case SetSafeMode(on):
                safe_mode = on
            case Drill():
                pass
        after = {"drained": sorted(drained), "safe_mode": safe_mode}
        detail = {"reason": reason, "summary": effect.summary, "before": before, "after": after}
        if isinstance(command, Drill):
            detail["drill"] = command.kind
        # The audit entry is on disk before anything changes; then the new state is persisted,
        # and only then does routing see it.
        audit_id = await self._store.audit(actor, action, target, detail, "applied")
        if drained != self.drained:
            await self._store.kv_set(KV_DRAINS, sorted(drained))
        if safe_mode != self.safe_mode:
            await self._store.kv_set(KV_SAFE_MODE, safe_mode)
        if drained != self.drained or safe_mode != self.safe_mode:
            await self._store.bump_state()  # other processes on this file reload it
        self.drained, self.safe_mode = drained, safe_mode
        if isinstance(command, Drill):
            assert self._chaos is not None
            if command.kind == "heal":
                self._chaos(command.provider, None)
                self.drills.pop(command.provider, None)
            else:
                self._chaos(command.provider, DRILL_KNOBS[command.kind])
                self.drills[command.provider] = command.kind
        self.audit.appendleft(
            AuditView(audit_id, now, actor, action, target, "applied", effect.summary)
        )
        return CommandResult(True, effect.summary, audit_id)

    def _state(self) -> dict[str, Any]:
        return {"drained": sorted(self.drained), "safe_mode": self.safe_mode}

    def drill_views(self) -> tuple[DrillView, ...]:
        return tuple(DrillView(p, k) for p, k in sorted(self.drills.items()))


_DRILL_TEXT: Mapping[str, str] = {
    "errors": "80% of its requests fail with HTTP 500",
    "429": "90% of its requests are rate limited (429, Retry-After 2 s)",
    "latency": "every answer is 1.5 s slower",
    "hang": "requests are accepted and never answered",
}


def _target(command: OperatorCommand) -> str | None:
    match command:
        case Drain(t) | Undrain(t):
            return t
        case Drill(provider, _):
            return provider
        case SetSafeMode(on):
            return "on" if on else "off"


def _audit_view(row: Mapping[str, Any]) -> AuditView:
    detail = row.get("detail") or {}
    summary = detail.get("summary", "") if isinstance(detail, dict) else ""
    return AuditView(
        id=row["id"],
        at=row["at"],
        actor=row["actor"],
        action=row["action"],
        target=row["target"],
        result=row["result"],
        summary=summary,
    )
