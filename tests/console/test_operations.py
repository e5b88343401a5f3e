"""The console against a real engine: press the real keys, assert the engine changed.

Each test runs the engine and its proxy on a loopback port over in-process simulated
providers, drives `RouteDeckApp` with Pilot through a `LocalLink` (or a `RemoteLink` to the
admin API), and checks routing through real HTTP requests.
"""

from __future__ import annotations

import re
import socket
import time

import httpx
from textual.pilot import Pilot
from textual.widgets import Button, Input, Label

from console.app import RouteDeckApp
from console.screens.confirm import ConfirmScreen
from console.screens.edit_tier import EditTierScreen
from console.widgets import formatting as fmt
from console.widgets.provider_table import ProviderTable, deployment_key, provider_key
from console.widgets.spend_pane import SpendTable
from console.widgets.tail_pane import PATH_SEPARATOR, TailPane
from console.widgets.tier_pane import TierPane
from engine.link import RemoteLink
from engine.snapshot import RolloutView
from tests.console.conftest import ADMIN_TOKEN, SIZE, Proxy, console, run_command, wait_for


def _confirm_open(app: RouteDeckApp) -> bool:
    return isinstance(app.screen, ConfirmScreen)


async def _select(app: RouteDeckApp, pilot: Pilot[None], key: str) -> None:
    table = app.query_one(ProviderTable)
    # Walk the cursor with real keys so selection is tested the way an operator makes it.
    table.focus()
    while table.selected_key != key:
        assert table.cursor_row < table.row_count - 1, f"no row {key}"
        await pilot.press("down")


async def test_drain_key_drains_the_selected_provider_and_traffic_avoids_it(proxy: Proxy) -> None:
    assert (await proxy.chat("low")).headers["x-routedeck-provider"] == "sim-a"
    async with console(proxy) as (app, pilot):
        await _select(app, pilot, provider_key("sim-a"))
        await pilot.press("d")
        await wait_for(pilot, lambda: _confirm_open(app), "the confirmation")
        dialog = app.screen
        assert dialog.focused is not None and dialog.focused.id == "cancel"
        summary = str(dialog.query_one("#dialog-summary").render())
        assert summary.startswith("drains sim-a")
        assert proxy.engine.drained == frozenset(), "nothing changes before confirming"

        await pilot.press("tab", "enter")
        await wait_for(pilot, lambda: "sim-a" in proxy.engine.drained, "the drain")
        await wait_for(
            pilot,
            lambda: app.snapshot is not None and "sim-a" in app.snapshot.drained,
            "the drained snapshot on screen",
        )
        table = app.query_one(ProviderTable)
        assert table.cell_text(provider_key("sim-a"), "state") == "⏸ drained"
        shown = app.snapshot
        assert shown is not None
        assert any(a.action == "drain" and a.target == "sim-a" for a in shown.audit)

    before = proxy.sim_requests("sim-a")
    for _ in range(5):
        response = await proxy.chat("low")
        assert response.headers["x-routedeck-provider"] == "sim-b"
    assert proxy.sim_requests("sim-a") == before


async def test_cancel_changes_nothing(proxy: Proxy) -> None:
    async with console(proxy) as (app, pilot):
        await pilot.press("d")
        await wait_for(pilot, lambda: _confirm_open(app), "the confirmation")
        await pilot.press("enter")  # focus starts on Cancel
        await wait_for(pilot, lambda: not _confirm_open(app), "the dialog to close")
        await pilot.press("d")
        await wait_for(pilot, lambda: _confirm_open(app), "the confirmation")
        await pilot.press("escape")
        await wait_for(pilot, lambda: not _confirm_open(app), "the dialog to close")
    assert proxy.engine.drained == frozenset()
    assert (await proxy.chat("low")).headers["x-routedeck-provider"] == "sim-a"


async def test_safe_mode_key_sends_traffic_to_the_safe_mode_tier(proxy: Proxy) -> None:
    async with console(proxy) as (app, pilot):
        await pilot.press("s")
        await wait_for(pilot, lambda: _confirm_open(app), "the confirmation")
        await pilot.press("tab", "enter")
        await wait_for(pilot, lambda: proxy.engine.safe_mode, "safe mode")
        badge = app.query_one("#badge-safe", Label)
        await wait_for(pilot, lambda: badge.display, "the SAFE MODE badge")

        response = await proxy.chat("low")
        assert response.headers["x-routedeck-tier"] == "recovery"
        assert response.headers["x-routedeck-provider"] == "sim-c"

        await pilot.press("s")
        await wait_for(pilot, lambda: _confirm_open(app), "the confirmation")
        await pilot.press("tab", "enter")
        await wait_for(pilot, lambda: not proxy.engine.safe_mode, "safe mode off")
        await wait_for(pilot, lambda: not badge.display, "the badge to go")
    assert (await proxy.chat("low")).headers["x-routedeck-tier"] == "low"


async def test_read_only_refuses_every_change(proxy: Proxy) -> None:
    async with console(proxy, read_only=True, demo=True) as (app, pilot):
        for key in ("d", "s", "1", "0"):
            await pilot.press(key)
            await pilot.pause()
            assert not _confirm_open(app), f"{key} opened a dialog in read-only mode"
        for action in ("drain", "safe_mode", "drill"):
            assert app.check_action(action, ()) is False, f"{action} is offered"
        assert app.check_action("pause", ()) is True
        shown = {binding.action for _, binding, enabled, _ in app.active_bindings.values()}
        assert "drain" not in shown and "safe_mode" not in shown

        await run_command(pilot, "drain sim-a")
        await run_command(pilot, "safe on")
        await pilot.pause()
        assert not _confirm_open(app)
        assert app.query_one("#badge-read-only", Label).display
    assert proxy.engine.drained == frozenset()
    assert not proxy.engine.safe_mode
    assert proxy.engine.snapshot(fresh=True).drills == ()


async def test_command_mode_drains_and_undrains_a_deployment(proxy: Proxy) -> None:
    async with console(proxy) as (app, pilot):
        await run_command(pilot, "drain b-mid")
        await wait_for(pilot, lambda: _confirm_open(app), "the confirmation")
        await pilot.click("#confirm")
        await wait_for(pilot, lambda: "b-mid" in proxy.engine.drained, "the drain")
        response = await proxy.chat("high")
        assert response.headers["x-routedeck-deployment"] == "c-big"

        await run_command(pilot, "undrain b-mid")
        await wait_for(pilot, lambda: _confirm_open(app), "the confirmation")
        await pilot.click("#confirm")
        await wait_for(pilot, lambda: not proxy.engine.drained, "the undrain")


async def test_drain_that_strands_a_tier_asks_to_type_the_name(proxy: Proxy) -> None:
    async with console(proxy) as (app, pilot):
        await _select(app, pilot, provider_key("sim-c"))
        await pilot.press("d")
        await wait_for(pilot, lambda: _confirm_open(app), "the confirmation")
        dialog = app.screen
        confirm = dialog.query_one("#confirm", Button)

        def enabled() -> bool:
            return not confirm.disabled

        assert not enabled()
        assert "recovery" in str(dialog.query_one("#dialog-warning").render())
        await pilot.press(*"sim-")
        assert not enabled()
        await pilot.press("c")
        assert enabled()
        await pilot.press("enter")
        await wait_for(pilot, lambda: "sim-c" in proxy.engine.drained, "the drain")


async def test_drill_keys_break_and_heal_the_selected_provider(proxy: Proxy) -> None:
    async with console(proxy, demo=True) as (app, pilot):
        await _select(app, pilot, provider_key("sim-a"))
        await pilot.press("1")
        await wait_for(
            pilot,
            lambda: (
                app.snapshot is not None
                and any(d.provider == "sim-a" and d.kind == "errors" for d in app.snapshot.drills)
            ),
            "the error storm",
        )
        # The storm makes sim-a fail, so the low tier falls back to sim-b.
        response = await proxy.chat("low")
        assert response.headers["x-routedeck-provider"] == "sim-b"
        assert response.headers["x-routedeck-fallback"] == "a-mini>b-mid"

        await pilot.press("0")
        await wait_for(
            pilot, lambda: app.snapshot is not None and not app.snapshot.drills, "the heal"
        )
        assert (await proxy.chat("low")).headers["x-routedeck-provider"] == "sim-a"


async def test_drill_keys_do_nothing_outside_demo_mode(proxy: Proxy) -> None:
    async with console(proxy) as (app, pilot):
        await pilot.press("1")
        await pilot.pause()
        assert app.check_action("drill", ("errors",)) is False
        assert app.snapshot is not None and not app.snapshot.drills


async def test_pause_stops_rendering_while_the_engine_runs_on(proxy: Proxy) -> None:
    async with console(proxy) as (app, pilot):
        await pilot.press("p")
        assert app.paused
        assert app.query_one("#badge-paused", Label).display
        assert app.snapshot is not None
        frozen = app.snapshot.seq
        await proxy.chat("low")
        await wait_for(
            pilot, lambda: proxy.engine.snapshot().seq > frozen + 5, "the engine to publish"
        )
        assert app.snapshot.seq == frozen

        await pilot.press("p")
        await wait_for(
            pilot,
            lambda: app.snapshot is not None and app.snapshot.requests_total >= 1,
            "rendering to resume with the request counted",
        )
        assert not app.query_one("#badge-paused", Label).display


async def test_attached_console_drains_the_remote_engine(proxy: Proxy) -> None:
    link = RemoteLink(proxy.url, token=ADMIN_TOKEN, poll_interval=0.05)
    try:
        app = RouteDeckApp(link, refresh_interval=0.05)
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: app.snapshot is not None, "the first snapshot")
            assert app.query_one("#badge-attached", Label).display
            await _select(app, pilot, provider_key("sim-a"))
            await pilot.press("d")
            await wait_for(pilot, lambda: _confirm_open(app), "the confirmation")
            await pilot.press("tab", "enter")
            await wait_for(pilot, lambda: "sim-a" in proxy.engine.drained, "the remote drain")
            await wait_for(
                pilot,
                lambda: app.snapshot is not None and "sim-a" in app.snapshot.drained,
                "the drain to show",
            )
    finally:
        await link.close()
    assert (await proxy.chat("low")).headers["x-routedeck-provider"] == "sim-b"


async def test_quit_asks_first(proxy: Proxy) -> None:
    async with console(proxy) as (app, pilot):
        await pilot.press("q")
        await wait_for(pilot, lambda: _confirm_open(app), "the confirmation")
        await pilot.press("escape")
        await wait_for(pilot, lambda: not _confirm_open(app), "the dialog to close")
        assert app.is_running
        await pilot.press("q")
        await wait_for(pilot, lambda: _confirm_open(app), "the confirmation")
        await pilot.press("tab", "enter")
        await wait_for(pilot, lambda: not app.is_running, "the app to exit")


async def test_unknown_command_is_refused_with_a_message(proxy: Proxy) -> None:
    async with console(proxy) as (app, pilot):
        await run_command(pilot, "frobnicate")
        await pilot.pause()
        messages = [n.message for n in app._notifications]
        assert any(":frobnicate is not a command" in m for m in messages)
        command_line = app.query_one("#command-line", Input)
        assert not command_line.display


async def test_a_failing_provider_opens_its_breaker_on_screen(proxy: Proxy) -> None:
    assert proxy.engine.sim is not None
    proxy.engine.sim.chaos.set("sim-a", error_rate=1.0, error_status=500)

    def breaker(name: str) -> str:
        dep = next(d for d in proxy.engine.snapshot(fresh=True).deployments if d.name == name)
        return dep.breaker

    async with console(proxy) as (app, pilot):
        # Every request tries a-mini first; the breaker opens after 5 failures in a row.
        async with httpx.AsyncClient(base_url=proxy.url, timeout=10) as client:
            deadline = time.monotonic() + 10
            while breaker("a-mini") != "open":
                assert time.monotonic() < deadline, "a-mini's breaker never opened"
                await client.post(
                    "/v1/chat/completions",
                    json={"model": "low", "messages": [{"role": "user", "content": "ping"}]},
                )
        failed_a = proxy.sim_requests("sim-a")

        table = app.query_one(ProviderTable)
        state = deployment_key("a-mini")
        await wait_for(
            pilot,
            lambda: table.cell_text(state, "state").startswith("⊘ open "),
            "the open breaker in the provider row",
        )
        assert table.cell_text(state, "state").endswith("s"), "with the time left"
        assert table.cell_text(provider_key("sim-a"), "state") == "✖ down"

        def tiers() -> str:
            return " ".join(str(app.query_one(TierPane).render()).split())

        await wait_for(pilot, lambda: "⊘ a-mini" in tiers(), "a-mini skipped in the tiers")
        assert "breaker open: 5 failures in a row, last 5xx" in tiers()
        assert "● b-mid" in tiers()

        tail = app.query_one(TailPane).table
        fell_back = PATH_SEPARATOR.join(("a-mini", "b-mid"))
        paths = {tail.cell_text(key, "path") for key in tail.keys}
        assert fell_back in paths, "the requests that fell back show their path"
        assert {tail.cell_text(key, "why") for key in tail.keys} == {"tier"}

        # While the breaker is open, low is served by b-mid without trying a-mini.
        response = await proxy.chat("low")
        assert response.headers["x-routedeck-provider"] == "sim-b"
        assert proxy.sim_requests("sim-a") == failed_a


_ZERO = re.compile(r"\$0\.00(?![0-9])")
"""Zero dollars as the console writes them ($0.00), not the start of $0.0013."""


async def test_spend_pane_shows_the_real_dollars_cache_hits_and_unpriced_traffic(
    proxy: Proxy,
) -> None:
    async with console(proxy) as (app, pilot):
        # Three different deterministic requests, each twice: the second round is answered
        # from the cache, so half the lookups hit.
        cache = []
        for _ in range(2):
            for n in range(3):
                response = await proxy.chat("low", f"what does invoice {n} total?", temperature=0)
                cache.append(response.headers["x-routedeck-cache"])
                if response.headers["x-routedeck-cache"] == "miss":
                    assert response.headers["x-routedeck-deployment"] == "a-mini"
                    assert float(response.headers["x-routedeck-cost"]) > 0
        assert cache == ["miss"] * 3 + ["hit"] * 3
        unpriced = await proxy.chat("high")
        assert unpriced.headers["x-routedeck-cost"] == "unpriced"

        summary = app.query_one("#spend-summary")

        def text() -> str:
            return str(summary.render())

        await wait_for(pilot, lambda: "cache    50.0% hit" in text(), "the cache hit ratio")
        await wait_for(pilot, lambda: "▲ unpriced: c-big (1 req)" in text(), "the warning")
        spend = app.snapshot.spend if app.snapshot else None
        assert spend is not None and spend.today_usd > 0
        first = text().splitlines()[0]
        assert first.startswith("spent    ≥$"), first
        assert f"≥{fmt.usd(spend.today_usd)} today" in first
        assert not _ZERO.search(first) and "— today" not in first
        saved = text().splitlines()[-1]
        assert saved.startswith("cache    50.0% hit · saved $"), saved
        assert not _ZERO.search(saved), "the hits saved what their first calls cost"

        table = app.query_one(SpendTable)
        await wait_for(pilot, lambda: "deployment:c-big" in table.keys, "the unpriced row")
        assert table.cell_text("deployment:c-big", "usd") == "▲ unpriced"
        dollars = table.cell_text("deployment:a-mini", "usd")
        assert dollars.startswith("$") and not _ZERO.search(dollars), dollars
        assert table.cell_text("tenant:local", "usd") == fmt.usd(spend.today_usd)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_an_unreachable_engine_shows_why_beside_stale() -> None:
    url = f"http://127.0.0.1:{_closed_port()}"
    link = RemoteLink(url, poll_interval=0.05, timeout=1)
    now = [100.0]
    try:
        app = RouteDeckApp(link, refresh_interval=0.05, clock=lambda: now[0])
        async with app.run_test(size=SIZE) as pilot:
            await wait_for(pilot, lambda: link.last_error is not None, "a failed poll")
            now[0] += app.stale_after + 1
            app.update_age()
            error = app.query_one("#link-error", Label)
            await wait_for(pilot, lambda: error.display, "the link error in the header")
            assert str(app.query_one("#age", Label).render()).startswith("STALE")
            shown = str(error.render())
            assert shown and url not in shown, "the address is already on the left"
            assert link.last_error is not None and shown in link.last_error
    finally:
        await link.close()


async def test_a_tier_edit_rolls_out_advances_by_override_and_rolls_back(proxy: Proxy) -> None:
    def rollout() -> RolloutView | None:
        return proxy.engine.snapshot(fresh=True).rollout

    async with console(proxy, actor="oncall") as (app, pilot):
        await pilot.press("m")
        await wait_for(pilot, lambda: isinstance(app.screen, EditTierScreen), "the editor")
        editor = app.screen
        mapping = editor.query_one("#editor-mapping", Input)
        assert mapping.value == "a-mini > b-mid", "prefilled with the baseline's mapping"
        mapping.value = "b-mid > nowhere"
        await pilot.press("enter")
        error = editor.query_one("#editor-error")
        await wait_for(pilot, lambda: error.display, "the engine's refusal in the editor")
        assert "nowhere" in str(error.render())
        assert rollout() is None

        mapping.value = "b-mid > a-mini"
        editor.query_one("#editor-note", Input).value = "b-mid first"
        await pilot.press("enter")
        await wait_for(pilot, lambda: _confirm_open(app), "the confirmation")
        await pilot.press("tab", "enter")
        await wait_for(pilot, lambda: rollout() is not None, "the rollout to start")
        started = rollout()
        assert started is not None and started.note == "b-mid first"
        await wait_for(pilot, lambda: app.snapshot is not None and app.snapshot.rollout, "it shows")
        stage = started.stage_index

        # No traffic yet, so every gate waits: advancing is an override, with a reason.
        await pilot.press("a")
        await wait_for(pilot, lambda: _confirm_open(app), "the override")
        dialog = app.screen
        assert dialog.query_one("#dialog-input", Input) is dialog.focused
        await pilot.press(*"override", "enter")
        await pilot.press(*"smoke test", "enter")
        await wait_for(
            pilot, lambda: (rollout() or started).stage_index == stage + 1, "the next stage"
        )
        audit = proxy.engine.snapshot(fresh=True).audit
        assert audit[0].actor == "oncall" and audit[0].action == "advance"

        await pilot.press("b")
        await wait_for(pilot, lambda: _confirm_open(app), "the rollback confirmation")
        await pilot.press("tab", "enter")
        await wait_for(pilot, lambda: rollout() is None, "the rollback")
    assert (await proxy.chat("low")).headers["x-routedeck-provider"] == "sim-a"
