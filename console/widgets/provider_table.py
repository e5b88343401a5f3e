"""`ProviderTable`: provider health, one row per provider followed by its deployments.

Row keys are stable (``provider:NAME``, ``deployment:NAME``) so the cursor stays on the same
provider while the numbers change; `selected` tells the app which target a key acts on.

Each deployment's circuit breaker shows with the time until it lets a probe through
(``⊘ open 12s``, ``◐ half-open``). When the table is wide enough it has a column of its own,
and a provider row counts its deployments' breakers that are not closed; in a narrow table the
state cell of a deployment whose breaker is not closed shows the breaker instead of the health
(an open breaker means the deployment is down; a half-open one is being probed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from textual.reactive import var

from console.widgets import formatting as fmt
from console.widgets.live_table import Cell, Column, LiveTable, Row
from engine.snapshot import DeploymentView, ProviderView, Snapshot

COLUMNS = (
    Column("name", "provider", 17),
    Column("state", "state", 11),
    Column("breaker", "breaker", 15, drop=1),
    Column("p95", "p95", 5),
    ("errors", "err", 4),
    ("r429", "429", 4),
    ("timeouts", "t/o", 4),
    ("in_flight", "busy", 4),
    ("share", "share", 5),
    ("spark", "1 min", 8),
)


@dataclass(frozen=True, slots=True)
class Target:
    """What the selected row stands for."""

    kind: Literal["provider", "deployment"]
    name: str
    provider: str
    """The provider itself, or the deployment's provider."""


def provider_key(name: str) -> str:
    return f"provider:{name}"


def deployment_key(name: str) -> str:
    return f"deployment:{name}"


def _rate(value: float | None) -> Cell:
    text = fmt.percent(value)
    return (text, "warn") if value else text


def _breaker(dep: DeploymentView, *, suffix: str = "") -> Cell:
    if dep.breaker == "closed":
        # A drained deployment's closed breaker takes no traffic: no green for it.
        return (fmt.breaker("closed"), "drained" if dep.state == "drained" else "healthy")
    return (
        fmt.breaker(dep.breaker, dep.breaker_left_s, suffix=suffix),
        fmt.BREAKER_STATES.get(dep.breaker, "warn"),
    )


def _breakers(deployments: list[DeploymentView]) -> Cell:
    """A provider's count of deployment breakers that are not closed; blank when none."""
    counts = [
        (kind, sum(1 for d in deployments if d.breaker == kind)) for kind in ("open", "half_open")
    ]
    parts = [
        f"{fmt.BREAKER_GLYPHS[kind]} {n} {fmt.BREAKER_STATES[kind]}" for kind, n in counts if n
    ]
    if not parts:
        return ""
    worst = next(kind for kind, n in counts if n)
    return (" ".join(parts), fmt.BREAKER_STATES[worst])


def _row(
    view: ProviderView | DeploymentView, name: Cell, breaker: Cell, *, compact: bool
) -> tuple[Cell, ...]:
    state: Cell = (fmt.health(view.state), view.state)
    if compact and isinstance(view, DeploymentView) and view.breaker != "closed":
        state = _breaker(view)
    return (
        name,
        state,
        breaker,
        fmt.millis(view.p95_ms),
        _rate(view.error_rate),
        _rate(view.rate_429),
        _rate(view.timeout_rate),
        str(view.in_flight),
        fmt.percent(view.share),
        fmt.spark(view.spark, 8),
    )


def rows(snapshot: Snapshot, *, compact: bool = False) -> list[Row]:
    """The table's rows for ``snapshot``: each provider, then its deployments in config order.

    ``compact`` is for a table without the breaker column: deployment state cells show it.
    """
    deployments = {d.name: d for d in snapshot.deployments}
    drills = {d.provider: d.kind for d in snapshot.drills}
    out: list[Row] = []
    for provider in snapshot.providers:
        name: Cell = (provider.name, "muted" if provider.state == "drained" else "strong")
        if provider.name in drills:
            # A provider broken on purpose says so, so nobody chases a drill as an incident.
            name = (f"{provider.name} ⚡{drills[provider.name]}", "warn")
        mine = [deployments[name] for name in provider.deployments if name in deployments]
        out.append(
            (provider_key(provider.name), _row(provider, name, _breakers(mine), compact=compact))
        )
        for index, dep in enumerate(mine):
            branch = "└" if index == len(mine) - 1 else "├"
            label = f"{branch} {dep.name}"
            out.append(
                (
                    deployment_key(dep.name),
                    _row(
                        dep,
                        (label, "muted") if dep.state == "drained" else label,
                        _breaker(dep, suffix=" left"),
                        compact=compact,
                    ),
                )
            )
    return out


class ProviderTable(LiveTable):
    snapshot: var[Snapshot | None] = var(None)

    def __init__(self) -> None:
        super().__init__(COLUMNS, id="providers")
        self.border_title = "providers"

    def watch_snapshot(self, snapshot: Snapshot | None) -> None:
        if snapshot is not None and self.is_mounted:
            self.sync(rows(snapshot, compact=not self.shows("breaker")))

    def layout_changed(self) -> None:
        self.watch_snapshot(self.snapshot)

    @property
    def selected(self) -> Target | None:
        """The provider or deployment under the cursor, or None before the first snapshot."""
        key, snapshot = self.selected_key, self.snapshot
        if key is None or snapshot is None:
            return None
        kind, _, name = key.partition(":")
        if kind == "provider":
            return Target("provider", name, name)
        for dep in snapshot.deployments:
            if dep.name == name:
                return Target("deployment", name, dep.provider)
        return None
