"""`ProviderTable`: provider health, one row per provider followed by its deployments.

Row keys are stable (``provider:NAME``, ``deployment:NAME``) so the cursor stays on the same
provider while the numbers change; `selected` tells the app which target a key acts on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from textual.reactive import reactive

from console.widgets import formatting as fmt
from console.widgets.live_table import Cell, LiveTable, Row
from engine.snapshot import DeploymentView, ProviderView, Snapshot

COLUMNS = (
    ("name", "provider", 17),
    ("state", "state", 10),
    ("p95", "p95", 5),
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


def _row(view: ProviderView | DeploymentView, name: Cell) -> tuple[Cell, ...]:
    return (
        name,
        (fmt.health(view.state), view.state),
        fmt.millis(view.p95_ms),
        _rate(view.error_rate),
        _rate(view.rate_429),
        _rate(view.timeout_rate),
        str(view.in_flight),
        fmt.percent(view.share),
        fmt.spark(view.spark, 8),
    )


def rows(snapshot: Snapshot) -> list[Row]:
    """The table's rows for ``snapshot``: each provider, then its deployments in config order."""
    deployments = {d.name: d for d in snapshot.deployments}
    drills = {d.provider: d.kind for d in snapshot.drills}
    out: list[Row] = []
    for provider in snapshot.providers:
        name: Cell = (provider.name, "muted" if provider.state == "drained" else "strong")
        if provider.name in drills:
            # A provider broken on purpose says so, so nobody chases a drill as an incident.
            name = (f"{provider.name} ⚡{drills[provider.name]}", "warn")
        out.append((provider_key(provider.name), _row(provider, name)))
        mine = [deployments[name] for name in provider.deployments if name in deployments]
        for index, dep in enumerate(mine):
            branch = "└" if index == len(mine) - 1 else "├"
            label = f"{branch} {dep.name}"
            out.append(
                (
                    deployment_key(dep.name),
                    _row(dep, (label, "muted") if dep.state == "drained" else label),
                )
            )
    return out


class ProviderTable(LiveTable):
    snapshot: reactive[Snapshot | None] = reactive(None)

    def __init__(self) -> None:
        super().__init__(COLUMNS, id="providers")
        self.border_title = "providers"

    def watch_snapshot(self, snapshot: Snapshot | None) -> None:
        if snapshot is not None and self.is_mounted:
            self.sync(rows(snapshot))

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
