"""GET /metrics: Prometheus text that adds up to the traffic sent, with bounded labels."""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from engine.commands import EditTier
from engine.prometheus import CAUSES, Totals
from state.records import RequestRecord
from tests.engine.conftest import Proxy, make_config, running, wait_logged

DOCS = Path(__file__).resolve().parents[2] / "docs"

EXTRA = """
[tasks]
classification = "low"
rewrite = "medium"

[tenants.acme]
daily_budget_usd = 50
monthly_budget_usd = 500
"""


def chat(model: str, text: str = "Classify: urgent or not?", **more: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": text}], **more}


async def scrape(http: httpx.AsyncClient, **headers: str) -> list[Sample]:
    r = await http.get("/metrics", headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    return [s for family in text_string_to_metric_families(r.text) for s in family.samples]


def total(samples: Iterable[Sample], name: str, **labels: str) -> float:
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k, "") == v for k, v in labels.items())
    )


def by(samples: Iterable[Sample], name: str, *keys: str) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for s in samples:
        if s.name == name and s.value:
            key = tuple(s.labels.get(k, "") for k in keys)
            out[key] = out.get(key, 0) + s.value
    return out


async def stream(http: httpx.AsyncClient, body: dict[str, Any], **headers: str) -> str:
    async with http.stream(
        "POST", "/v1/chat/completions", json={**body, "stream": True}, headers=headers
    ) as r:
        await r.aread()
    assert r.status_code == 200
    return r.headers["x-routedeck-fallback"]


async def send_known_mix(proxy: Proxy, http: httpx.AsyncClient) -> int:
    """The traffic the counters are checked against; returns how many requests it sent."""
    key, _ = await proxy.engine.keys.create("acme", "metrics test", now=proxy.engine.clock())
    acme = {"authorization": f"Bearer {key}", "x-routedeck-task": "classification"}
    for _ in range(3):  # low, tenant acme, task classification
        r = await http.post("/v1/chat/completions", json=chat("low"), headers=acme)
        assert r.status_code == 200
    for _ in range(2):  # medium, tenant local, task rewrite
        r = await http.post(
            "/v1/chat/completions", json=chat("medium"), headers={"x-routedeck-task": "rewrite"}
        )
        assert r.headers["x-routedeck-deployment"] == "b-mid"
    r = await http.post("/v1/chat/completions", json=chat("high"))  # c-big has no price
    assert r.headers["x-routedeck-cost"] == "unpriced"
    for _ in range(2):
        assert await stream(http, chat("low")) == "none"

    proxy.fail("sim-a", error_rate=1.0, error_status=503)  # "overloaded": low falls back
    for _ in range(2):
        r = await http.post("/v1/chat/completions", json=chat("low"))
        assert r.headers["x-routedeck-fallback"] == "a-mini>b-mid"
    assert await stream(http, chat("low")) == "a-mini>b-mid"
    proxy.sim.chaos.clear("sim-a")

    deterministic = chat("low", "Say OK.", temperature=0)
    first = await http.post("/v1/chat/completions", json=deterministic)
    again = await http.post("/v1/chat/completions", json=deterministic)
    assert (first.headers["x-routedeck-cache"], again.headers["x-routedeck-cache"]) == (
        "miss",
        "hit",
    )
    return 3 + 2 + 1 + 2 + 3 + 2


async def test_counters_add_up_to_the_traffic_and_the_request_log(tmp_path: Path) -> None:
    async with (
        running(make_config(tmp_path, EXTRA)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=10) as http,
    ):
        sent = await send_known_mix(proxy, http)
        await wait_logged(proxy, sent)
        samples = await scrape(http)
        store = proxy.engine.store

        requests = by(samples, "routedeck_requests_total", "tier")
        assert requests == {("low",): 10, ("medium",): 2, ("high",): 1}
        rows = await store.query("SELECT coalesce(tier, 'none'), COUNT(*) FROM requests GROUP BY 1")
        assert requests == {(row[0],): row[1] for row in rows}
        assert by(samples, "routedeck_requests_total", "tenant", "task_type") == {
            ("acme", "classification"): 3,
            ("local", "rewrite"): 2,
            ("local", "none"): 8,
        }
        assert by(samples, "routedeck_requests_total", "outcome", "status_class") == {
            ("ok", "2xx"): sent
        }

        assert by(samples, "routedeck_fallbacks_total", "tier", "from_deployment") == {
            ("low", "a-mini"): 3
        }
        assert by(samples, "routedeck_fallbacks_total", "to_deployment", "cause") == {
            ("b-mid", "overloaded"): 3
        }
        (fallbacks,) = await store.query("SELECT COUNT(*) FROM requests WHERE fallback = 1")
        assert fallbacks[0] == 3
        (served,) = await store.query("SELECT COUNT(*) FROM requests WHERE deployment IS NOT NULL")
        assert total(samples, "routedeck_requests_served_total") == served[0] == sent - 1

        attempts = by(samples, "routedeck_attempts_total", "deployment", "outcome")
        assert attempts[("a-mini", "overloaded")] == 3
        rows = await store.query("SELECT deployment, outcome, COUNT(*) FROM attempts GROUP BY 1, 2")
        assert attempts == {(row[0], row[1]): row[2] for row in rows}

        (sums,) = await store.query(
            "SELECT SUM(input_tokens), SUM(output_tokens), SUM(cost_usd) FROM requests"
        )
        assert total(samples, "routedeck_tokens_total", token_type="input") == sums[0] > 0
        assert total(samples, "routedeck_tokens_total", token_type="output") == sums[1] > 0
        assert total(samples, "routedeck_cost_usd_total") == pytest.approx(sums[2], abs=1e-9)
        assert sums[2] > 0
        assert by(samples, "routedeck_unpriced_requests_total", "deployment") == {("c-big",): 1}

        assert total(samples, "routedeck_cache_hits_total") == 1
        assert total(samples, "routedeck_cache_misses_total") == 1
        (saved,) = await store.query("SELECT saved_usd FROM requests WHERE cache = 'hit'")
        assert total(samples, "routedeck_cache_saved_usd_total") == pytest.approx(saved[0])
        assert total(samples, "routedeck_tokens_total", deployment="cache") > 0

        # Histograms: one observation per request, per attempt, per served stream.
        assert total(samples, "gen_ai_server_request_duration_seconds_count") == sent
        assert (
            total(samples, "gen_ai_server_request_duration_seconds_count", deployment="cache") == 1
        )
        assert by(samples, "gen_ai_server_time_to_first_token_seconds_count", "deployment") == {
            ("a-mini",): 2,
            ("b-mid",): 1,
        }
        assert total(samples, "gen_ai_client_operation_duration_seconds_count") == sum(
            attempts.values()
        )
        assert (
            total(
                samples,
                "gen_ai_client_operation_duration_seconds_count",
                deployment="a-mini",
                error_type="overloaded",
                gen_ai_provider_name="openai",
                gen_ai_request_model="a-mini-1",
            )
            == 3
        )
        (attempt_tokens,) = await store.query(
            "SELECT SUM(input_tokens) FROM attempts WHERE input_tokens IS NOT NULL"
        )
        assert (
            total(samples, "gen_ai_client_token_usage_sum", gen_ai_token_type="input")
            == attempt_tokens[0]
        )

        # Gauges from the snapshot.
        assert total(samples, "routedeck_budget_limit_usd", tenant="acme", period="day") == 50
        assert total(samples, "routedeck_budget_limit_usd", tenant="acme", period="month") == 500
        assert {s.labels["deployment"] for s in samples if s.name == "routedeck_breaker_state"} == {
            "a-mini",
            "b-mid",
            "c-big",
        }
        assert total(samples, "routedeck_safe_mode") == 0
        assert total(samples, "routedeck_rollout_active") == 0
        assert total(samples, "routedeck_baseline_release_info", release="r1") == 1

        # Monotonic: more traffic only adds.
        assert (await http.post("/v1/chat/completions", json=chat("low"))).status_code == 200
        await wait_logged(proxy, sent + 1)
        later = await scrape(http)
        assert by(later, "routedeck_requests_total", "tier")[("low",)] == 11
        assert total(later, "routedeck_cost_usd_total") > total(samples, "routedeck_cost_usd_total")


async def test_drains_and_safe_mode_show_in_the_gauges(tmp_path: Path) -> None:
    async with (
        running(make_config(tmp_path, EXTRA)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=10) as http,
    ):
        r = await http.post(
            "/admin/commands", json={"command": "drain", "target": "sim-c", "reason": "test"}
        )
        assert r.status_code == 200, r.text
        samples = await scrape(http)
        drained = by(samples, "routedeck_deployment_drained", "provider", "deployment")
        assert drained == {("sim-c", "c-big"): 1}


async def test_labels_stay_bounded_whatever_clients_send(tmp_path: Path) -> None:
    async with (
        running(make_config(tmp_path, EXTRA)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=10) as http,
    ):

        async def random_batch(n: int) -> None:
            for i in range(n):
                # A key that looks like routedeck's is refused (401); any other is tenant local.
                key = ("rd-" if i % 2 else "sk-") + secrets.token_hex(8)
                await http.post(
                    "/v1/chat/completions",
                    json=chat("low"),
                    headers={
                        "authorization": f"Bearer {key}",
                        "x-routedeck-task": secrets.token_hex(6),
                        "x-routedeck-user": secrets.token_hex(6),
                    },
                )

        await random_batch(10)
        await wait_logged(proxy, 10)
        first = await scrape(http)
        await random_batch(20)
        await wait_logged(proxy, 30)
        second = await scrape(http)

        def series(samples: list[Sample]) -> set[tuple[str, tuple[tuple[str, str], ...]]]:
            return {(s.name, tuple(sorted(s.labels.items()))) for s in samples}

        assert series(second) == series(first)  # 20 more random clients, no new series
        requests = [s for s in second if s.name == "routedeck_requests_total"]
        assert {s.labels["task_type"] for s in requests} == {"other"}
        assert {s.labels["tenant"] for s in requests} == {"local"}
        assert {s.labels["outcome"] for s in requests} == {"ok", "auth"}
        assert total(second, "routedeck_requests_total", outcome="auth", status_class="4xx") == 15
        assert total(second, "routedeck_requests_total", tier="none") == 15
        for s in second:
            for name in ("outcome", "cause", "error_type"):
                assert s.labels.get(name, "ok") in CAUSES | {"other"}


def test_a_tier_is_a_label_once_the_baseline_routes_to_it(tmp_path: Path) -> None:
    totals = Totals(make_config(tmp_path))
    rec = RequestRecord(
        request_id="rd-1",
        started_at=0.0,
        tenant="nobody-configured",
        api="openai",
        model_requested="x",
        tier="brand-new",
        tier_reason="tier",
        arm="candidate",
        deployment="a-mini",
        provider="sim-a",
        stream=False,
        status=200,
        outcome="ok",
        attempts=1,
        fallback=False,
        latency_ms=5.0,
        ttft_ms=None,
        input_tokens=1,
        output_tokens=1,
        cost_usd=0.0,
        cache="bypass",
        task="made-up",
    )
    totals.request_finished(rec, ("a-mini",), ())
    # A candidate's new tier is "other" until a baseline routes to it (after promotion).
    totals.request_finished(dataclasses.replace(rec, arm="baseline"), ("a-mini",), ())
    totals.request_finished(rec, ("a-mini",), ())
    assert Counter({k[:4]: int(v) for k, v in totals.requests.items()}) == Counter(
        {
            ("other", "other", "other", "candidate"): 1,
            ("brand-new", "other", "other", "baseline"): 1,
            ("brand-new", "other", "other", "candidate"): 1,
        }
    )


async def test_metrics_need_the_admin_token_when_one_is_set(tmp_path: Path) -> None:
    async with (
        running(make_config(tmp_path), admin_token="s3cret") as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=10) as http,
    ):
        assert (await http.get("/metrics")).status_code == 401
        wrong = await http.get("/metrics", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        samples = await scrape(http, authorization="Bearer s3cret")
        assert total(samples, "routedeck_safe_mode") == 0


def _alert_exprs(text: str) -> list[str]:
    """The ``expr:`` values of a Prometheus rules file: one line, or a ``|`` block."""
    exprs = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)expr:\s*(.*)$", line)
        if not m:
            continue
        indent, value = len(m.group(1)), m.group(2).strip()
        if value not in ("|", ">", "|-", ">-"):
            exprs.append(value)
            continue
        block = []
        for follow in lines[i + 1 :]:
            if follow.strip() and len(follow) - len(follow.lstrip()) <= indent:
                break
            block.append(follow.strip())
        exprs.append(" ".join(block))
    return exprs


_NAME = re.compile(r"\b((?:routedeck|gen_ai)_[a-z0-9_]+)\b")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
_MATCHER = re.compile(r"[{,]\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")


async def test_every_name_the_dashboard_and_alerts_use_exists(tmp_path: Path) -> None:
    async with (
        running(make_config(tmp_path, EXTRA)) as proxy,
        httpx.AsyncClient(base_url=proxy.url, timeout=10) as http,
    ):
        sent = await send_known_mix(proxy, http)
        await wait_logged(proxy, sent)
        # A rollout in progress, so that the rollout gauges have samples too.
        started = await proxy.engine.submit(EditTier("medium", "a-mini > b-mid"), actor="test")
        assert started.ok, started.message
        text = (await http.get("/metrics")).text
        view = proxy.engine.snapshot().rollout
    assert view is not None
    names: set[str] = set()
    labels: set[str] = set()
    for family in text_string_to_metric_families(text):
        names.add(family.name)
        names.update({"counter": [f"{family.name}_total"]}.get(family.type, []))
        for s in family.samples:
            names.add(s.name)
            labels.update(s.labels)

    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    rollout = {
        (s.name, s.labels.get("stage", ""), s.labels.get("state", "")): s.value
        for s in samples
        if s.name.startswith("routedeck_rollout_") and s.labels.get("release") == "r2"
    }
    assert rollout == {
        ("routedeck_rollout_stage_index", view.stage, ""): view.stage_index,
        ("routedeck_rollout_target_ratio", "", ""): view.target_percent / 100,
        ("routedeck_rollout_state", "", "running"): 1,
        ("routedeck_rollout_state", "", "halted"): 0,
    }
    assert total(samples, "routedeck_rollout_active") == 1

    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += _alert_exprs((DOCS / "prometheus-alerts.yml").read_text())
    assert len(exprs) >= 20
    used_names: set[str] = set()
    used_labels: set[str] = set()
    for expr in exprs:
        used_names.update(n for n in _NAME.findall(expr) if n not in labels)
        for group in _GROUPING.findall(expr):
            used_labels.update(x.strip() for x in group.split(",") if x.strip())
        used_labels.update(_MATCHER.findall(expr))
    used_labels -= {"job"}  # added by Prometheus, not by routedeck
    assert used_names - names == set()
    assert used_labels - labels == set()
    # The panels the dashboard promises use what they should.
    for needed in (
        "routedeck_requests_total",
        "gen_ai_server_request_duration_seconds_bucket",
        "routedeck_attempts_total",
        "routedeck_fallbacks_total",
        "routedeck_tokens_total",
        "routedeck_cost_usd_total",
        "routedeck_cache_hits_total",
        "routedeck_breaker_state",
        "routedeck_rollout_stage_index",
    ):
        assert needed in used_names
