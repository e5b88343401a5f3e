"""`RouteDeckApp`: the routedeck console.

    app = RouteDeckApp(LocalLink(engine), demo=True)
    await app.run_async()

The app sees the engine only through an `EngineLink`: it renders snapshots and submits
commands. One worker (the snapshot pump) reads ``link.snapshots()``, paces itself to the
refresh rate, and assigns the newest snapshot to the single reactive `snapshot` unless
rendering is paused or a dialog is open; every pane is data-bound to it. A one-second tick
owned by the app recomputes only how old the data is and why the link went quiet (when it
says), so the header can turn stale when the engine goes quiet and tell why.

Every change follows the same path: a key from `console.bindings` → an ``action_*`` →
``link.preview`` → a `ConfirmScreen` that states the effect → ``link.submit`` → a toast, and
the audit line arrives with the next snapshot. Read-only mode hides and refuses every
dangerous action; drill keys exist only in demo mode.

Releases take the same path. ``m`` opens the `EditTierScreen`, which stays open under the
confirmation and shows the engine's refusal (a bad mapping) with the text as typed. ``a``
advances the rollout; when the engine refuses because a gate does not pass, the confirmation
becomes the override: it says which gate and asks for the typed word and a reason, as an
emergency change does. ``b`` rolls back.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from textual import on, work
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import BindingType
from textual.containers import Grid
from textual.reactive import var
from textual.screen import ModalScreen, Screen
from textual.widgets import DataTable, Footer

from console import bindings
from console.bindings import KeySpec
from console.screens.confirm import ConfirmScreen
from console.screens.edit_tier import EditTierScreen
from console.screens.help import HelpScreen
from console.widgets.alerts_pane import AlertsPane
from console.widgets.audit_table import AuditTable
from console.widgets.command_line import CommandLine
from console.widgets.fallback_pane import FallbackPane
from console.widgets.provider_table import ProviderTable, Target
from console.widgets.rollout_pane import RolloutPane
from console.widgets.spend_pane import SpendPane
from console.widgets.status_header import Freshness, StatusHeader
from console.widgets.tail_pane import TailPane
from console.widgets.tier_pane import TierPane
from engine.commands import (
    DRILL_KINDS,
    Advance,
    Command,
    CommandError,
    Drain,
    Drill,
    EditTier,
    Effect,
    Rollback,
    SetSafeMode,
    StartRollout,
    Undrain,
)
from engine.link import EngineLink, LinkError
from engine.snapshot import RolloutView, Snapshot

REFRESH_RATES = (0.25, 0.5, 1.0, 2.0)
"""Seconds between renders that ``r`` cycles through."""

STALE_AFTER_INTERVALS = 4
"""The header turns stale after this many refresh intervals without a snapshot..."""
STALE_AFTER_MIN_S = 2.0
"""...but never sooner than this, so a fast refresh rate does not flap on a busy loop."""

AGE_TICK_S = 1.0


class RouteDeckApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "routedeck"
    BINDINGS: ClassVar[list[BindingType]] = bindings.bindings()
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]
    VERTICAL_BREAKPOINTS = [(0, "-short"), (36, "-tall")]

    # `var`, not `reactive`: a reactive on the app repaints the whole screen whenever it
    # changes, and `freshness` changes every second. The panes bound to these repaint
    # themselves, and only what changed.
    snapshot: var[Snapshot | None] = var(None)
    """The snapshot on screen; the only reactive the panes render from."""
    paused: var[bool] = var(False)
    freshness: var[Freshness | None] = var(None)
    refresh_interval: var[float] = var(0.5)

    _body: Grid
    _providers: ProviderTable
    _tail: TailPane
    _command_line: CommandLine

    def __init__(
        self,
        link: EngineLink,
        *,
        read_only: bool = False,
        demo: bool = False,
        refresh_interval: float = 0.5,
        actor: str = "console",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """
        Args:
            link: the engine, embedded (`LocalLink`) or attached (`RemoteLink`). The app does
                not close it; whoever made it does.
            read_only: hide and refuse every action that changes the engine.
            demo: offer the drill keys that break and heal simulated providers.
            refresh_interval: seconds between renders; ``r`` cycles through `REFRESH_RATES`.
            actor: the name written to the audit log for this console's commands.
            clock: monotonic seconds, for the data age; tests pass a frozen one.
        """
        super().__init__()
        self._link = link
        self._read_only = read_only
        self._demo = demo
        self._actor = actor
        self._clock = clock
        self.set_reactive(RouteDeckApp.refresh_interval, refresh_interval)
        self._latest: Snapshot | None = None
        self._arrived_at: float | None = None
        self._shown_at: float | None = None
        self._started_at = clock()
        self._possible: tuple[bool | None, ...] = ()

    @property
    def link(self) -> EngineLink:
        return self._link

    @property
    def read_only(self) -> bool:
        return self._read_only

    @property
    def demo(self) -> bool:
        return self._demo

    # -- layout -----------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield StatusHeader(
            label=self._link.label, read_only=self._read_only, attached=self._link.attached
        ).data_bind(RouteDeckApp.snapshot, RouteDeckApp.freshness, RouteDeckApp.paused)
        # The main screen's widgets, kept so actions reach them while a dialog is on top.
        self._providers = ProviderTable()
        self._tail = TailPane()
        self._command_line = CommandLine(self._command_hint())
        # The grid places panes in this order in every layout (app.tcss); spend and alerts
        # come before rollout so that their row spans leave no hole.
        with Grid(id="body") as self._body:
            yield self._providers.data_bind(RouteDeckApp.snapshot)
            yield TierPane().data_bind(RouteDeckApp.snapshot)
            yield FallbackPane().data_bind(RouteDeckApp.snapshot)
            yield SpendPane().data_bind(RouteDeckApp.snapshot)
            yield AlertsPane().data_bind(RouteDeckApp.snapshot)
            yield RolloutPane(read_only=self._read_only).data_bind(RouteDeckApp.snapshot)
            yield self._tail.data_bind(RouteDeckApp.snapshot)
            yield AuditTable().data_bind(RouteDeckApp.snapshot)
        yield self._command_line
        yield Footer(compact=True, show_command_palette=False)

    def on_mount(self) -> None:
        self._command_line.display = False
        self._providers.focus()
        self.update_age()
        self.set_interval(AGE_TICK_S, self.update_age, name="data-age")
        self.run_worker(self._pump(), name="snapshot-pump", group="pump", exclusive=True)

    # -- the snapshot pump ------------------------------------------------------------------

    async def _pump(self) -> None:
        snapshots = self._link.snapshots()
        try:
            async for snapshot in snapshots:
                self._latest = snapshot
                self._arrived_at = self._clock()
                self._show_latest()
                # Pacing the reads is the coalescing: the link hands over only its newest
                # snapshot, so the ones published while we wait are simply superseded.
                await asyncio.sleep(self.refresh_interval)
        except LinkError as exc:
            self.notify(str(exc), title="engine link lost", severity="error", timeout=30)
        finally:
            close = getattr(snapshots, "aclose", None)
            if close is not None:
                await close()

    def _show_latest(self) -> None:
        """Put the newest snapshot on screen unless paused or a dialog is open."""
        latest = self._latest
        if latest is None or latest is self.snapshot or self.paused:
            return
        if isinstance(self.screen, ModalScreen):
            return
        self._shown_at = self._arrived_at
        # One batch, so every pane's change reaches the screen in a single update.
        with self.batch_update():
            self.snapshot = latest
            self.update_age()

    def update_age(self) -> None:
        """Recompute how old the data is and why the link went quiet (the tick, once a second)."""
        now = self._clock()
        last = self._arrived_at if self._arrived_at is not None else self._started_at
        silent_for = now - last
        self.freshness = Freshness(
            shown_age=None if self._shown_at is None else now - self._shown_at,
            silent_for=silent_for,
            stale=silent_for > self.stale_after,
            link_error=self._link.last_error,
        )

    @property
    def stale_after(self) -> float:
        """Seconds without a snapshot after which the header says the data is stale."""
        return max(STALE_AFTER_MIN_S, STALE_AFTER_INTERVALS * self.refresh_interval)

    def watch_snapshot(self, snapshot: Snapshot | None) -> None:
        # A rollout in progress takes room from the spend table where the layout has it.
        self._body.set_class(snapshot is not None and snapshot.rollout is not None, "-rollout")
        self._refresh_possible()

    def watch_paused(self, paused: bool) -> None:
        if not paused:
            self._show_latest()

    # -- what is allowed --------------------------------------------------------------------

    def _unavailable(self, spec: KeySpec) -> str | None:
        """Why ``spec`` cannot run in this mode at all, or None when the mode allows it."""
        if spec.demo_only and not self._demo:
            return "demo mode only"
        if spec.dangerous and self._read_only:
            return "read-only"
        return None

    def _is_possible(self, action: str) -> bool:
        """Whether ``action`` has something to act on right now (else it shows dimmed)."""
        snapshot, target = self.snapshot, self.selected
        if action == "safe_mode":
            return snapshot is not None and snapshot.safe_mode_tier is not None
        if action == "drain":
            return snapshot is not None and target is not None
        if action in ("advance", "rollback"):
            return snapshot is not None and snapshot.rollout is not None
        if action == "edit_tier":
            return snapshot is not None and bool(snapshot.tiers)
        if action == "drill":
            return (
                snapshot is not None
                and target is not None
                and snapshot.drills_available
                and any(p.name == target.provider and p.simulated for p in snapshot.providers)
            )
        return True

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        spec = bindings.for_action(action)
        if spec is None:
            return True
        if self._unavailable(spec) is not None:
            return False
        return True if self._is_possible(action) else None

    def _refresh_possible(self) -> None:
        # Re-evaluating the footer on every render would redraw it needlessly; only do it
        # when what is possible actually changed.
        possible = tuple(
            self.check_action(spec.action_name, ()) for spec in bindings.REGISTRY if spec.key
        )
        if possible != self._possible:
            self._possible = possible
            self.refresh_bindings()

    @on(DataTable.RowHighlighted, "#providers")
    def _selection_moved(self) -> None:
        self._refresh_possible()

    @property
    def selected(self) -> Target | None:
        """The provider or deployment row under the cursor in the provider table."""
        return self._providers.selected

    def help_entries(self) -> list[tuple[KeySpec, str | None]]:
        """Every registry entry with why it is unavailable here (None when it is available)."""
        return [(spec, self._unavailable(spec)) for spec in bindings.REGISTRY]

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        for spec in bindings.REGISTRY:
            if spec.key is None or spec.id in ("command", "back"):
                continue
            if self.check_action(spec.action_name, ()):
                yield SystemCommand(
                    spec.help.capitalize(),
                    f"key {spec.display}",
                    lambda action=spec.action: self.call_later(self.run_action, action),
                )

    # -- keys -------------------------------------------------------------------------------

    def action_help(self) -> None:
        self.push_screen(HelpScreen(self.help_entries()), lambda _: self._show_latest())

    def action_command(self) -> None:
        self._command_line.open()

    def action_filter(self) -> None:
        self._tail.start_filter()

    def action_pause(self) -> None:
        self.paused = not self.paused

    def action_cycle_rate(self) -> None:
        rates = sorted({*REFRESH_RATES, self.refresh_interval})
        self.refresh_interval = rates[(rates.index(self.refresh_interval) + 1) % len(rates)]
        self.notify(f"rendering every {self.refresh_interval:g}s", timeout=2)

    async def action_back(self) -> None:
        command_line = self._command_line
        if command_line.display:
            command_line.close()
        else:
            self._tail.clear_filter()
        self._providers.focus()

    def action_drain(self) -> None:
        target = self.selected
        if target is not None:
            self._toggle_drain(target.name)

    def action_undrain(self) -> None:
        target = self.selected
        if target is not None:
            self.operate(Undrain(target.name))

    def action_safe_mode(self) -> None:
        if self.snapshot is not None:
            self.operate(SetSafeMode(not self.snapshot.safe_mode))

    def action_drill(self, kind: str) -> None:
        target = self.selected
        if target is not None:
            self._drill(target.provider, kind)

    def action_edit_tier(self) -> None:
        self.edit_tier()

    def action_advance(self) -> None:
        self.operate(Advance())

    def action_rollback(self) -> None:
        self.operate(Rollback())

    async def action_quit(self) -> None:
        self._confirm_quit()

    def edit_tier(self, tier: str | None = None) -> None:
        """Open the tier editor on ``tier`` (the first tier when None)."""
        if self._read_only:
            self.notify("read-only: this console does not change the engine", severity="error")
            return
        snapshot = self.snapshot
        if snapshot is None or not snapshot.tiers:
            self.notify("no tiers to edit yet: waiting for the engine", severity="warning")
            return
        names = [t.name for t in snapshot.tiers]
        if tier is not None and tier not in names:
            self.notify(f"no tier {tier!r}; tiers: {', '.join(names)}", severity="error")
            return
        self.push_screen(EditTierScreen(snapshot.tiers, tier), lambda _: self._show_latest())

    @on(EditTierScreen.Proposed)
    def _tier_edited(self, event: EditTierScreen.Proposed) -> None:
        self.operate(event.command, editor=event.editor)

    def _toggle_drain(self, name: str) -> None:
        drained = self.snapshot is not None and name in self.snapshot.drained
        self.operate(Undrain(name) if drained else Drain(name))

    def _drill(self, provider: str, kind: str) -> None:
        for known in DRILL_KINDS:
            if kind == known:
                self.operate(Drill(provider, known))
                return
        self.notify(
            f"drill {kind!r} is unknown; use one of {', '.join(DRILL_KINDS)}", severity="error"
        )

    # -- command mode -----------------------------------------------------------------------

    def _command_hint(self) -> str:
        verbs = [
            spec.command
            for spec in bindings.REGISTRY
            if spec.command and self._unavailable(spec) is None
        ]
        return " · ".join(verbs)

    @on(CommandLine.Run)
    def _command_entered(self, event: CommandLine.Run) -> None:
        self._providers.focus()
        self.run_command(event.line)

    def run_command(self, line: str) -> None:
        """Run one ``:`` command line (without the colon); refusals are toasts, never raises."""
        verb, *args = line.split()
        spec = bindings.for_verb(verb)
        if spec is None:
            self.notify(f":{verb} is not a command; ? lists them", severity="warning")
            return
        unavailable = self._unavailable(spec)
        if unavailable is not None:
            self.notify(f":{verb} is refused: {unavailable}", severity="error")
            return
        usage = f"usage: :{spec.command}"
        match spec.id, args:
            case ("drain", [target]):
                self.operate(Drain(target))
            case ("undrain", [target]):
                self.operate(Undrain(target))
            case ("safe_mode", ["on" | "off" as state]):
                self.operate(SetSafeMode(state == "on"))
            case ("edit_tier", [] | [_] as tier):
                self.edit_tier(*tier)
            case ("advance", []):
                self.operate(Advance())
            case ("rollback", []):
                self.operate(Rollback())
            case ("drill", [provider, kind]):
                self._drill(provider, kind)
            case ("quit", []):
                self.exit()
            case ("help", []):
                self.action_help()
            case ("pause", []):
                self.action_pause()
            case ("filter", words):
                tail = self._tail
                tail.filter_input.value = " ".join(words)
                tail.filter_input.display = bool(words)
            case ("rate", [seconds]):
                self._set_rate(seconds)
            case _:
                self.notify(usage, severity="warning")

    def _set_rate(self, seconds: str) -> None:
        try:
            value = float(seconds)
        except ValueError:
            value = 0.0
        if not 0.05 <= value <= 60:
            self.notify("the refresh interval is seconds between 0.05 and 60", severity="error")
            return
        self.refresh_interval = value
        self.notify(f"rendering every {value:g}s", timeout=2)

    # -- operations -------------------------------------------------------------------------

    # Not exclusive: a second operation must never cancel one whose submit is in flight.
    @work(group="operate")
    async def operate(self, command: Command, *, editor: EditTierScreen | None = None) -> None:
        """Preview ``command``, ask for confirmation (drills skip it), submit, toast the result.

        ``editor``: the tier editor the command comes from; it stays open under the
        confirmation, shows a refusal, and closes once the engine took the change.
        """
        if self._read_only:
            self.notify("read-only: this console does not change the engine", severity="error")
            return
        title, _ = self._describe(command)
        try:
            reason = ""
            if not isinstance(command, Drill):
                effect = await self._link.preview(command)
                if not effect.allowed and command == Advance():
                    command, effect = await self._override(effect)
                if not effect.allowed:
                    self._refused(title, effect.summary, editor)
                    return
                title, confirm_label = self._describe(command)
                confirmed = await self.push_screen_wait(
                    ConfirmScreen(
                        title,
                        effect.summary,
                        effect.details,
                        confirm_label=confirm_label,
                        stranded_tiers=effect.stranded_tiers,
                        confirm_text=effect.confirm_text,
                        warning=_why_typed(command),
                        needs_reason=effect.needs_reason,
                    )
                )
                self._show_latest()
                if confirmed is None:
                    if editor is not None:
                        editor.resume()
                    return
                reason = confirmed
            result = await self._link.submit(command, actor=self._actor, reason=reason)
        except (LinkError, CommandError) as exc:
            self._refused(title, str(exc), editor)
            return
        self.notify(result.message, title=title, severity="information" if result.ok else "error")
        if editor is not None:
            if not result.ok:
                editor.refuse(result.message)
            elif editor.is_active:
                editor.dismiss(None)

    async def _override(self, refusal: Effect) -> tuple[Command, Effect]:
        """The override of an advance the engine refused (a gate fails or waits for data):
        the override's effect, with the refusal that says which gate as its first detail.
        When the engine refuses the override too (no rollout at all), the refusal stands."""
        override = Advance(override=True)
        effect = await self._link.preview(override)
        if not effect.allowed:
            return Advance(), refusal
        return override, dataclasses.replace(effect, details=(refusal.summary, *effect.details))

    def _refused(self, title: str, message: str, editor: EditTierScreen | None) -> None:
        self.notify(message, title=title, severity="error", timeout=10)
        if editor is not None:
            editor.refuse(message)

    def _describe(self, command: Command) -> tuple[str, str]:
        """A dialog title and the confirm button's label for ``command``."""
        rollout = self.snapshot.rollout if self.snapshot is not None else None
        return _describe(command, rollout)

    @work(exclusive=True, group="quit")
    async def _confirm_quit(self) -> None:
        if self._link.attached:
            summary = f"The console detaches; the engine at {self._link.label} keeps running."
        else:
            summary = f"The embedded engine stops and its proxy at {self._link.label} closes."
        confirmed = await self.push_screen_wait(
            ConfirmScreen("Quit routedeck?", summary, confirm_label="Quit")
        )
        self._show_latest()
        if confirmed is not None:
            self.exit()


def _describe(command: Command, rollout: RolloutView | None) -> tuple[str, str]:
    """A dialog title and the confirm button's label for ``command``; ``rollout`` (as last
    shown) names what an advance or a rollback acts on."""
    match command:
        case Drain(target):
            return f"Drain {target}?", "Drain"
        case Undrain(target):
            return f"Undrain {target}?", "Undrain"
        case SetSafeMode(True):
            return "Turn safe mode on?", "Safe mode on"
        case SetSafeMode(False):
            return "Turn safe mode off?", "Safe mode off"
        case Drill(provider, kind):
            return f"Drill {kind} on {provider}", "Drill"
        case Advance(override):
            what = (rollout.next_action if rollout is not None else "") or "advance the rollout"
            if override:
                return f"Override the gates: {what}?", "Override"
            return f"{what[0].upper()}{what[1:]}?", "Advance"
        case Rollback():
            if rollout is not None:
                return f"Roll back {rollout.release}?", "Roll back"
            return "Roll back the rollout?", "Roll back"
        case EditTier(tier, _, _, emergency):
            if emergency:
                return f"Apply tier {tier}'s new mapping to all traffic now?", "Apply now"
            return f"Start a release with tier {tier}'s new mapping?", "Start rollout"
        case StartRollout(_, _, emergency):
            if emergency:
                return "Apply this release to all traffic now?", "Apply now"
            return "Start a release?", "Start rollout"
    raise AssertionError(command)


def _why_typed(command: Command) -> str | None:
    """Why the confirmation asks to type a word, for the commands that skip a safety."""
    match command:
        case Advance(True):
            return "▲ Type override to advance although gates do not pass."
        case EditTier(emergency=True) | StartRollout(emergency=True):
            return "▲ Skips every stage and gate. Type emergency to apply this to all traffic now."
    return None
