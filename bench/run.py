"""routedeck's overhead benchmark: the proxy against the same simulated upstream called directly.

    .venv/bin/python bench/run.py            # the full run, about four minutes
    .venv/bin/python bench/run.py --quick    # a smoke check, under a minute
    .venv/bin/python bench/run.py --ref HEAD # measure a commit instead of the working tree

One run starts the simulated upstream and the proxy (`bench.services`), then, for
non-streaming and for streaming requests:

1. warms both targets up (not recorded);
2. for each rate of the plan, runs ``rounds`` pairs of open-loop windows (`bench.loadgen`), one
   straight to the simulator ("direct") and one through routedeck ("proxy"), alternating which
   goes first, so that drift in the machine's load lands on both targets alike;
3. searches for the highest rate each target sustains, alternating targets at each step.

It prints the tables and writes every figure to ``bench/results/run-<UTC time>.json``.
bench/README.md explains each figure and the method. Exit status: 0 when the run completed
(whatever the figures), 1 when a process failed to start or died, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson

if not __package__:  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import RequestSpec, WindowResult, percentile, run_window, summarize
from bench.services import (
    REPO,
    SIM_PROFILE,
    ServiceError,
    Services,
    code_identity,
    cpu_busy_seconds,
    export_ref,
    self_cpu_seconds,
)

RESULTS = Path(__file__).resolve().parent / "results"
MAX_TOKENS = 64
# A rate is *sustained* when fewer than MAX_ERROR_RATIO of its requests fail, p99 latency
# (from the due time) is at most P99_BOUND_MS, and the achieved rate is at least MIN_ACHIEVED
# of the offered one.
MAX_ERROR_RATIO = 0.01
P99_BOUND_MS = 100.0
MIN_ACHIEVED = 0.95
# ARCHITECTURE.md's budget: added latency at BUDGET_RATE, streaming and not.
BUDGET_RATE = 300.0
BUDGET_P50_MS = 1.0
BUDGET_P99_MS = 5.0
SETTLE_MAX_S = 5.0
"""The longest wait for both servers to go quiet before a window."""
TARGETS = ("direct", "proxy")
MODES = ("plain", "stream")
MODE_TITLES = {"plain": "non-streaming", "stream": "streaming"}


@dataclass(frozen=True, slots=True)
class Plan:
    """How long and at which rates to measure."""

    rates: tuple[float, ...]
    rounds: int
    window_s: float
    min_requests: int
    """A grid window lasts at least this many requests (so p99 rests on a few samples)."""
    warmup_s: float
    ladder: tuple[float, ...]
    """Rates tried above the grid while a target still sustains the rate before."""
    search_window_s: float
    bisections: int


FULL = Plan(
    rates=(50, 100, 200, 300, 500),
    rounds=3,
    window_s=2.0,
    min_requests=150,
    warmup_s=2.0,
    ladder=(700, 1000, 1400, 2000, 2800),
    search_window_s=3.0,
    bisections=2,
)
QUICK = Plan(
    rates=(100, 300),
    rounds=1,
    window_s=1.0,
    min_requests=50,
    warmup_s=0.5,
    ladder=(600, 1000),
    search_window_s=1.0,
    bisections=1,
)


@dataclass(frozen=True, slots=True)
class _Counters:
    """Cumulative counters read at one instant (seconds)."""

    wall: float
    proxy: float
    sim: float
    loadgen: float
    busy: float
    busy_proxy_core: float | None


@dataclass(slots=True)
class Window:
    """One measured window and the other processes' counters over the same span."""

    mode: str
    target: str
    rate: float
    phase: str
    """``grid`` or ``search``."""
    round: int
    result: WindowResult
    proxy_cpu_s: float
    sim_cpu_s: float
    loadgen_cpu_s: float
    other_cpu_s: float
    """Busy CPU on the machine not spent by the proxy, the simulator or this process: other
    people's work, plus kernel time (softirq) charged to no process."""
    other_proxy_core_s: float | None
    """The part of ``other_cpu_s`` on the proxy's core, when the processes are pinned."""
    wall_s: float
    settle_s: float
    """How long the servers took to go quiet before the window (at most `SETTLE_MAX_S`)."""
    proxy_rss_kib: int
    """The proxy's VmRSS right after the window."""

    @property
    def answered(self) -> int:
        """Responses the target sent (successes plus error statuses and cut streams)."""
        r = self.result
        lost = sum(v for k, v in r.error_kinds.items() if not k.startswith(("http_", "incomplete")))
        return r.planned - lost

    def sustained(self) -> bool:
        """Whether this window alone meets the sustained-rate criteria."""
        return _sustained([self])

    def to_json(self) -> dict[str, Any]:
        r = self.result
        return {
            "mode": self.mode,
            "target": self.target,
            "rate": self.rate,
            "phase": self.phase,
            "round": self.round,
            "planned": r.planned,
            "ok": r.ok,
            "errors": r.errors,
            "error_kinds": r.error_kinds,
            "achieved_rps": r.achieved_rps,
            "latency_ms": summarize(r.latency_ms),
            "send_latency_ms": summarize(r.send_latency_ms),
            "ttfb_ms": summarize(r.ttfb_ms) if r.ttfb_ms else None,
            "send_lag_ms": summarize(r.send_lag_ms),
            "connections": r.connections,
            "connections_opened_late": r.connections_opened_late,
            "max_in_flight": r.max_in_flight,
            "wall_s": self.wall_s,
            "proxy_cpu_s": self.proxy_cpu_s,
            "sim_cpu_s": self.sim_cpu_s,
            "loadgen_cpu_s": self.loadgen_cpu_s,
            "loadgen_cpu_window_s": r.cpu_s,
            "other_cpu_s": self.other_cpu_s,
            "other_proxy_core_s": self.other_proxy_core_s,
            "settle_s": self.settle_s,
            "proxy_rss_kib": self.proxy_rss_kib,
            "sustained": self.sustained(),
        }


def _sustained(windows: Sequence[Window]) -> bool:
    planned = sum(w.result.planned for w in windows)
    errors = sum(w.result.errors for w in windows)
    latencies = sorted(x for w in windows for x in w.result.latency_ms)
    if not latencies or errors > MAX_ERROR_RATIO * planned:
        return False
    if percentile(latencies, 99) > P99_BOUND_MS:
        return False
    return all(w.result.achieved_rps >= MIN_ACHIEVED * w.rate for w in windows)


@dataclass(slots=True)
class _Search:
    """The highest sustained rate of one target, found by a ladder then bisection."""

    best: float
    fail: float | None
    ladder: list[float]
    bisections: int
    tried: list[tuple[float, bool]] = field(default_factory=list)

    @classmethod
    def after_grid(
        cls, grid: dict[float, bool], ladder: Iterable[float], bisections: int
    ) -> _Search:
        best, fail = 0.0, None
        for rate in sorted(grid):
            if not grid[rate]:
                fail = rate
                break
            best = rate
        top = max(grid)
        return cls(best, fail, [r for r in ladder if r > top], bisections)

    def next_rate(self) -> float | None:
        if self.fail is None:
            return self.ladder.pop(0) if self.ladder else None
        if self.bisections <= 0 or self.fail - self.best <= max(20.0, 0.08 * self.fail):
            return None
        return float(round((self.best + self.fail) / 20) * 10)

    def record(self, rate: float, ok: bool) -> None:
        self.tried.append((rate, ok))
        if self.fail is not None:
            self.bisections -= 1
        if ok:
            self.best = max(self.best, rate)
        else:
            self.fail = rate if self.fail is None else min(self.fail, rate)


class Bench:
    """One benchmark run against running services."""

    def __init__(self, services: Services, plan: Plan, proxy_core: int | None = None) -> None:
        self.services = services
        self.plan = plan
        self.proxy_core = proxy_core
        """The CPU the proxy is pinned to alone, if it is."""
        self.windows: list[Window] = []
        self.specs: dict[tuple[str, str], RequestSpec] = {}
        self.calibration: dict[str, Any] = {}
        self.memory: dict[str, int] = {}
        self.searches: dict[str, dict[str, _Search]] = {}
        self.search_steps: dict[str, list[dict[str, Any]]] = {}
        self.proxy_requests = 0

    # -- setup -----------------------------------------------------------------------------

    def calibrate(self) -> None:
        """Pick a prompt whose answer is ``MAX_TOKENS`` long both direct and through the proxy.

        The simulator derives an answer's length from a hash of the request body it receives,
        and the proxy's upstream body is not the client's, so without this the two targets
        could be timed on answers (and streams) of different lengths.
        """
        sim, proxy = self.services.sim, self.services.proxy
        try:
            chosen, tries = self._find_prompt()
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            raise ServiceError(f"a calibration request failed: {exc!r}") from exc
        self.calibration = chosen
        prompt = chosen["prompt"]
        for mode in MODES:
            stream = mode == "stream"
            self.specs[(mode, "direct")] = RequestSpec(
                "127.0.0.1",
                sim.port,
                "/v1/chat/completions",
                _body("bench-model", prompt, stream=stream),
                stream,
            )
            self.specs[(mode, "proxy")] = RequestSpec(
                "127.0.0.1",
                proxy.port,
                "/v1/chat/completions",
                _body("low", prompt, stream=stream),
                stream,
            )
        self.proxy_requests += 2 * tries

    def _find_prompt(self) -> tuple[dict[str, Any], int]:
        sim, proxy = self.services.sim, self.services.proxy
        with httpx.Client(timeout=10.0) as client:
            for tries in range(1, 65):
                prompt = f"Benchmark prompt {tries}: describe the weather."
                info: dict[str, Any] = {"prompt": prompt}
                for target, port, model in (
                    ("direct", sim.port, "bench-model"),
                    ("proxy", proxy.port, "low"),
                ):
                    url = f"http://127.0.0.1:{port}/v1/chat/completions"
                    body = _body(model, prompt, stream=False)
                    reply = client.post(url, content=body, headers=_JSON)
                    reply.raise_for_status()
                    info[f"{target}_completion_tokens"] = reply.json()["usage"]["completion_tokens"]
                    if target == "proxy":
                        info["proxy_tier_header"] = reply.headers.get("x-routedeck-tier")
                    streamed = client.post(
                        url, content=_body(model, prompt, stream=True), headers=_JSON
                    )
                    streamed.raise_for_status()
                    info[f"{target}_stream_events"] = streamed.text.count("data: ")
                    info[f"{target}_stream_bytes"] = len(streamed.content)
                    info[f"{target}_plain_bytes"] = len(reply.content)
                if (
                    info["direct_completion_tokens"] == MAX_TOKENS
                    and info["proxy_completion_tokens"] == MAX_TOKENS
                ):
                    return info, tries
        raise ServiceError(f"no prompt among 64 got a {MAX_TOKENS}-token answer from both targets")

    # -- measuring -------------------------------------------------------------------------

    async def settle(self, max_s: float = SETTLE_MAX_S) -> float:
        """Wait (at least 0.1 s, at most ``max_s``) until neither server is still busy: at
        most one clock tick of CPU between them over 0.1 s. Returns the seconds waited."""
        sim, proxy = self.services.sim, self.services.proxy
        started = time.monotonic()
        await asyncio.sleep(0.1)
        while time.monotonic() - started < max_s:
            a = proxy.cpu_seconds() + sim.cpu_seconds()
            await asyncio.sleep(0.1)
            if proxy.cpu_seconds() + sim.cpu_seconds() - a <= 0.011:
                break
        return time.monotonic() - started

    def _counters(self) -> _Counters:
        s = self.services
        busy = cpu_busy_seconds()
        return _Counters(
            wall=time.perf_counter(),
            proxy=s.proxy.cpu_seconds(),
            sim=s.sim.cpu_seconds(),
            loadgen=self_cpu_seconds(),
            busy=sum(busy.values()),
            busy_proxy_core=None if self.proxy_core is None else busy[f"cpu{self.proxy_core}"],
        )

    async def window(
        self, mode: str, target: str, rate: float, *, phase: str, round_: int = 0, seconds: float
    ) -> Window:
        """Settle, run one window at ``rate`` for ``seconds``, and record it (unless it is a
        warm-up). Raises `ServiceError` if the proxy or the simulator has died."""
        settle_s = await self.settle()
        if not (self.services.proxy.alive() and self.services.sim.alive()):
            raise ServiceError(
                "a benchmarked process died:\n"
                + self.services.proxy.log_tail()
                + "\n"
                + self.services.sim.log_tail()
            )
        marks: list[_Counters] = []
        result = await run_window(
            self.specs[(mode, target)],
            rate=rate,
            duration_s=seconds,
            on_start=lambda: marks.append(self._counters()),
            on_stop=lambda: marks.append(self._counters()),
        )
        a, b = marks
        proxy_cpu = b.proxy - a.proxy
        ours = proxy_cpu + (b.sim - a.sim) + (b.loadgen - a.loadgen)
        other_proxy_core = None
        if a.busy_proxy_core is not None and b.busy_proxy_core is not None:
            other_proxy_core = max(0.0, b.busy_proxy_core - a.busy_proxy_core - proxy_cpu)
        w = Window(
            mode=mode,
            target=target,
            rate=rate,
            phase=phase,
            round=round_,
            result=result,
            proxy_cpu_s=proxy_cpu,
            sim_cpu_s=b.sim - a.sim,
            loadgen_cpu_s=b.loadgen - a.loadgen,
            other_cpu_s=max(0.0, (b.busy - a.busy) - ours),
            other_proxy_core_s=other_proxy_core,
            wall_s=b.wall - a.wall,
            settle_s=settle_s,
            proxy_rss_kib=self.services.proxy.rss_kib(),
        )
        if target == "proxy":
            self.proxy_requests += result.planned
        if phase != "warmup":
            self.windows.append(w)
        _progress(w)
        return w

    async def run(self) -> None:
        """Warm up, measure the grid, then search, for each mode; fills the figures."""
        plan, proxy = self.plan, self.services.proxy
        self.memory["rss_kib_idle"] = proxy.rss_kib()
        for mode in MODES:
            for target in TARGETS:
                await self.window(mode, target, 100, phase="warmup", seconds=plan.warmup_s)
            if mode == MODES[0]:
                self.memory["rss_kib_after_warmup"] = proxy.rss_kib()
            for rate in plan.rates:
                seconds = max(plan.window_s, plan.min_requests / rate)
                for r in range(plan.rounds):
                    order = TARGETS if r % 2 == 0 else TARGETS[::-1]
                    for target in order:
                        await self.window(
                            mode, target, rate, phase="grid", round_=r, seconds=seconds
                        )
            await self.search(mode)
        self.memory["rss_kib_end"] = proxy.rss_kib()
        self.memory["hwm_kib_end"] = proxy.hwm_kib()
        self.memory["proxy_requests"] = self.proxy_requests

    async def search(self, mode: str) -> None:
        """Find each target's highest sustained rate, starting from its grid results."""
        searches = {
            target: _Search.after_grid(
                {
                    rate: _sustained(self.grid_windows(mode, target, rate))
                    for rate in self.plan.rates
                },
                self.plan.ladder,
                self.plan.bisections,
            )
            for target in TARGETS
        }
        self.searches[mode] = searches
        steps = self.search_steps.setdefault(mode, [])
        step = 0
        while True:
            order = TARGETS if step % 2 == 0 else TARGETS[::-1]
            todo = [(t, searches[t].next_rate()) for t in order]
            todo = [(t, r) for t, r in todo if r is not None]
            if not todo:
                return
            for target, rate in todo:
                assert rate is not None
                w = await self.window(
                    mode, target, rate, phase="search", seconds=self.plan.search_window_s
                )
                searches[target].record(rate, w.sustained())
                steps.append(
                    {
                        "target": target,
                        "rate": rate,
                        "sustained": w.sustained(),
                        "p99_ms": percentile(sorted(w.result.latency_ms), 99),
                        "error_pct": 100.0 * w.result.error_ratio,
                        "other_proxy_core_pct": None
                        if w.other_proxy_core_s is None
                        else 100.0 * w.other_proxy_core_s / w.wall_s,
                    }
                )
            step += 1

    def grid_windows(self, mode: str, target: str, rate: float) -> list[Window]:
        return [
            w
            for w in self.windows
            if w.phase == "grid" and w.mode == mode and w.target == target and w.rate == rate
        ]

    # -- figures ---------------------------------------------------------------------------

    def grid_rows(self, mode: str) -> list[dict[str, Any]]:
        """Per rate: pooled percentiles of both targets, their differences, CPU per request."""
        rows = []
        for rate in self.plan.rates:
            direct = self.grid_windows(mode, "direct", rate)
            proxy = self.grid_windows(mode, "proxy", rate)
            row: dict[str, Any] = {"rate": rate}
            for key in ("latency_ms", "ttfb_ms", "send_latency_ms"):
                if key == "ttfb_ms" and mode != "stream":
                    continue
                d = summarize(x for w in direct for x in getattr(w.result, key))
                p = summarize(x for w in proxy for x in getattr(w.result, key))
                row[key] = {"direct": d, "proxy": p, "added": _added(d, p)}
                # The spread of the same difference computed round by round.
                per_round = []
                for rd in range(self.plan.rounds):
                    dw = [w for w in direct if w.round == rd]
                    pw = [w for w in proxy if w.round == rd]
                    if dw and pw:
                        per_round.append(
                            _added(
                                summarize(x for w in dw for x in getattr(w.result, key)),
                                summarize(x for w in pw for x in getattr(w.result, key)),
                            )
                        )
                row[key]["added_by_round"] = per_round
            for target, ws in (("direct", direct), ("proxy", proxy)):
                planned = sum(w.result.planned for w in ws)
                errors = sum(w.result.errors for w in ws)
                answered = sum(w.answered for w in ws)
                wall = sum(w.wall_s for w in ws)
                row[target] = {
                    "planned": planned,
                    "errors": errors,
                    "error_pct": 100.0 * errors / planned if planned else math.nan,
                    "achieved_rps": min(w.result.achieved_rps for w in ws),
                    "sustained": _sustained(ws),
                    "proxy_cpu_ms_per_request": 1000.0 * sum(w.proxy_cpu_s for w in ws) / answered
                    if answered
                    else math.nan,
                    "proxy_cpu_pct": 100.0 * sum(w.proxy_cpu_s for w in ws) / wall,
                    "sim_cpu_ms_per_request": 1000.0 * sum(w.sim_cpu_s for w in ws) / answered
                    if answered
                    else math.nan,
                    "loadgen_cpu_ms_per_request": 1000.0
                    * sum(w.loadgen_cpu_s for w in ws)
                    / planned,
                    "loadgen_cpu_pct": 100.0 * sum(w.loadgen_cpu_s for w in ws) / wall,
                    "other_cpu_pct": 100.0 * sum(w.other_cpu_s for w in ws) / wall,
                    "other_proxy_core_pct": 100.0
                    * sum(w.other_proxy_core_s or 0.0 for w in ws)
                    / wall
                    if self.proxy_core is not None
                    else math.nan,
                    "other_sim_core_pct": 100.0
                    * sum(w.other_cpu_s - (w.other_proxy_core_s or 0.0) for w in ws)
                    / wall
                    if self.proxy_core is not None
                    else math.nan,
                    "p50_ms_by_round": [
                        percentile(sorted(w.result.latency_ms), 50)
                        for w in sorted(ws, key=lambda w: w.round)
                    ],
                    "p99_ms_by_round": [
                        percentile(sorted(w.result.latency_ms), 99)
                        for w in sorted(ws, key=lambda w: w.round)
                    ],
                    "proxy_cpu_ms_per_request_by_round": [
                        1000.0 * w.proxy_cpu_s / w.answered if w.answered else math.nan
                        for w in sorted(ws, key=lambda w: w.round)
                    ],
                    "send_lag_p99_ms": percentile(
                        sorted(x for w in ws for x in w.result.send_lag_ms), 99
                    ),
                }
            rows.append(row)
        return rows

    def budget(self) -> list[dict[str, Any]]:
        """The architecture's latency budget at `BUDGET_RATE` (nothing if not on the grid)."""
        out = []
        for mode in MODES:
            rows = [r for r in self.grid_rows(mode) if r["rate"] == BUDGET_RATE]
            if not rows:
                continue
            keys = ["latency_ms"] + (["ttfb_ms"] if mode == "stream" else [])
            for key in keys:
                added = rows[0][key]["added"]
                what = MODE_TITLES[mode] + (
                    ", first byte" if key == "ttfb_ms" else ", total" if mode == "stream" else ""
                )
                out.append(
                    {
                        "what": what,
                        "added_p50_ms": added["p50"],
                        "added_p99_ms": added["p99"],
                        "p50_ok": added["p50"] <= BUDGET_P50_MS,
                        "p99_ok": added["p99"] <= BUDGET_P99_MS,
                    }
                )
        return out

    def search_rows(self) -> dict[str, dict[str, Any]]:
        """Per mode and target: the highest sustained rate, the lowest failing one, the steps."""
        out: dict[str, dict[str, Any]] = {}
        for mode, searches in self.searches.items():
            out[mode] = {
                target: {
                    "max_sustained_rps": s.best,
                    "first_failing_rps": s.fail,
                    "tried": s.tried,
                    "top_tried": max([*self.plan.rates, *(r for r, _ in s.tried)]),
                }
                for target, s in searches.items()
            }
        return out


_JSON = {"content-type": "application/json"}


def _body(model: str, prompt: str, stream: bool) -> bytes:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": MAX_TOKENS,
    }
    if stream:
        body["stream"] = True
    return orjson.dumps(body)


def _added(direct: dict[str, float], proxy: dict[str, float]) -> dict[str, float]:
    return {q: proxy[q] - direct[q] for q in ("p50", "p90", "p95", "p99", "mean")}


def _progress(w: Window) -> None:
    r = w.result
    lat = summarize(r.latency_ms)
    extra = f" ttfb p50 {percentile(sorted(r.ttfb_ms), 50):6.2f}" if r.ttfb_ms else ""
    print(
        f"  {w.phase:7} {w.mode:6} {w.target:6} {w.rate:6.0f}/s  ok {r.ok:5} err {r.errors:4}"
        f"  p50 {lat['p50']:7.2f} p99 {lat['p99']:8.2f} ms{extra}"
        f"  proxy cpu {w.proxy_cpu_s:5.2f}s  other {100 * w.other_cpu_s / w.wall_s:4.0f}%"
        + (
            f" ({100 * w.other_proxy_core_s / w.wall_s:.0f}% on the proxy's core)"
            if w.other_proxy_core_s is not None
            else ""
        ),
        file=sys.stderr,
        flush=True,
    )


# -- report ------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _f(x: float, width: int = 6, digits: int = 2) -> str:
    return f"{x:{width}.{digits}f}" if not math.isnan(x) else f"{'-':>{width}}"


def _triple(s: dict[str, float]) -> str:
    return f"{_f(s['p50'])} {_f(s['p95'])} {_f(s['p99'], 7)}"


def render(report: dict[str, Any]) -> str:
    """The human-readable tables of a report (as written to JSON by `main`)."""
    meta = report["meta"]
    lines = [
        f"routedeck bench — {meta['date']} — {meta['nproc']} x {meta['cpu_model']}, "
        f"{meta['pinning']}",
        f"upstream: routedeck sim --profile {SIM_PROFILE}; answers of {MAX_TOKENS} tokens "
        f"({report['calibration'].get('direct_stream_events')} SSE events direct, "
        f"{report['calibration'].get('proxy_stream_events')} through routedeck)",
        "latency = due time (open loop) → last body byte; added = proxy percentile - direct "
        "percentile at the same rate",
        "",
    ]
    for mode in MODES:
        rows = report["grid"][mode]
        keys = ["latency_ms"] + (["ttfb_ms"] if mode == "stream" else [])
        for key in keys:
            what = {
                "latency_ms": "total",
                "ttfb_ms": "to first body byte (first SSE event)",
            }[key]
            lines.append(f"{MODE_TITLES[mode]}, {what}, ms")
            lines.append(
                "  rate |  direct p50    p95     p99 |   proxy p50    p95     p99 |"
                "   added p50    p95     p99 | added p50 / p99 by round"
            )
            for row in rows:
                fig = row[key]
                rounds = ", ".join(
                    f"{a['p50']:.2f}/{a['p99']:.1f}" for a in fig.get("added_by_round", [])
                )
                lines.append(
                    f"  {row['rate']:4.0f} | {_triple(fig['direct'])}     | "
                    f"{_triple(fig['proxy'])}     | {_triple(fig['added'])}     | {rounds}"
                )
            lines.append("")
        lines.append(f"{MODE_TITLES[mode]}, errors and CPU (proxy windows unless noted)")
        lines.append(
            "  rate | err% direct proxy | proxy CPU ms/req (by round)  % core | "
            "sim ms/req | loadgen ms/req % core | other load %, direct → proxy windows: "
            "proxy core, sim core (or all) | send lag p99 ms"
        )
        for row in rows:
            d, p = row["direct"], row["proxy"]
            by_round = "/".join(f"{x:.2f}" for x in p["proxy_cpu_ms_per_request_by_round"])
            if math.isnan(p["other_proxy_core_pct"]):
                other = f"{d['other_cpu_pct']:3.0f} → {p['other_cpu_pct']:3.0f}"
            else:
                other = (
                    f"{d['other_proxy_core_pct']:3.0f} → {p['other_proxy_core_pct']:3.0f}, "
                    f"{d['other_sim_core_pct']:3.0f} → {p['other_sim_core_pct']:3.0f}"
                )
            lines.append(
                f"  {row['rate']:4.0f} | {_f(d['error_pct'], 10)} {_f(p['error_pct'], 5)} | "
                f"{_f(p['proxy_cpu_ms_per_request'], 6, 2)} ({by_round:>14}) "
                f"{_f(p['proxy_cpu_pct'], 7, 1)} | "
                f"{_f(d['sim_cpu_ms_per_request'], 10, 3)} | "
                f"{_f(p['loadgen_cpu_ms_per_request'], 14, 3)} {_f(p['loadgen_cpu_pct'], 6, 1)} | "
                f"{other:>63} | {_f(p['send_lag_p99_ms'], 8)}"
            )
        lines.append("")
    lines.append(
        f"highest sustained rate (<{100 * MAX_ERROR_RATIO:.0f}% errors, p99 ≤ {P99_BOUND_MS:.0f} ms, "
        f"achieved ≥ {100 * MIN_ACHIEVED:.0f}% of offered), req/s"
    )
    for mode in MODES:
        cells = []
        for target in TARGETS:
            s = report["search"][mode][target]
            fail = s["first_failing_rps"]
            bound = f"fails at {fail:.0f}" if fail else f"not reached up to {s['top_tried']:.0f}"
            cells.append(f"{target} {s['max_sustained_rps']:.0f} ({bound})")
        lines.append(f"  {MODE_TITLES[mode]:14}: " + "; ".join(cells))
        for step in report["search_steps"][mode]:
            other = step["other_proxy_core_pct"]
            lines.append(
                f"      {step['target']:6} {step['rate']:5.0f}/s "
                f"{'sustained' if step['sustained'] else 'FAILED   '}  p99 {step['p99_ms']:8.1f} ms"
                f"  errors {step['error_pct']:5.1f}%"
                + (f"  other load on the proxy's core {other:.0f}%" if other is not None else "")
            )
    mem = report["memory"]
    lines += [
        "",
        f"proxy memory: VmRSS {mem['rss_kib_idle'] / 1024:.1f} MiB idle, "
        f"{mem['rss_kib_after_warmup'] / 1024:.1f} MiB after warm-up, "
        f"{mem['rss_kib_end'] / 1024:.1f} MiB after {mem['proxy_requests']} requests "
        f"(peak VmHWM {mem['hwm_kib_end'] / 1024:.1f} MiB)",
        f"proxy idle CPU (while the direct windows ran): {report['proxy_idle_cpu_pct']:.1f}% "
        "of a core",
        f"load average before/after: {meta['loadavg_before']} / {meta['loadavg_after']}",
        "",
        f"budget at {BUDGET_RATE:.0f} req/s (added p50 ≤ {BUDGET_P50_MS:g} ms, "
        f"added p99 ≤ {BUDGET_P99_MS:g} ms):",
    ]
    for line in report["budget"]:
        lines.append(
            f"  {line['what']:34} added p50 {line['added_p50_ms']:8.2f} ms "
            f"({'ok' if line['p50_ok'] else 'MISSED'})   added p99 {line['added_p99_ms']:8.2f} ms "
            f"({'ok' if line['p99_ok'] else 'MISSED'})"
        )
    return "\n".join(lines)


def prepare_code(ref: str | None, tmp: Path) -> tuple[Path, dict[str, Any]]:
    """Where to run the code under test from, and what it is (for the report).

    With ``ref`` the packages are exported from git into ``tmp/code``; without it the working
    tree is measured as it is. Raises `ServiceError` if ``ref`` cannot be exported.
    """
    if ref is None:
        return REPO, {"source": "working tree", **code_identity(REPO)}
    root = tmp / "code"
    commit = export_ref(ref, root)
    return root, {"source": f"git {ref}", "commit": commit, **code_identity(root)}


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Measure routedeck's added latency, throughput, CPU and memory against "
        "the simulated upstream called directly.",
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run (< 1 minute)")
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin the processes to separate cores"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON result")
    parser.add_argument(
        "--ref",
        help="measure this git commit (exported with git archive) instead of the working tree",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL

    cpus = sorted(os.sched_getaffinity(0))
    if args.no_pin or len(cpus) < 2:
        proxy_cpus = sim_cpus = None
        pinning = "not pinned"
    else:
        proxy_cpus, sim_cpus = {cpus[0]}, {cpus[1]}
        # Pin this process (the load generator) before it starts any thread.
        os.sched_setaffinity(0, sim_cpus)
        pinning = f"proxy pinned to CPU {cpus[0]}, simulator + load generator to CPU {cpus[1]}"

    started = dt.datetime.now(dt.UTC)
    meta: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", "bench/run.py", *(argv or sys.argv[1:])]),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pinning": pinning,
        "loadavg_before": _loadavg(),
        "plan": asdict(plan),
        "p99_bound_ms": P99_BOUND_MS,
        "sim_profile": SIM_PROFILE,
    }
    try:
        import uvloop

        loop_run: Any = uvloop.run
        meta["loadgen_loop"] = "uvloop"
    except ImportError:
        loop_run = asyncio.run
        meta["loadgen_loop"] = "asyncio"

    print(f"routedeck bench: {pinning}; plan {'quick' if args.quick else 'full'}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="routedeck-bench-") as tmp:
        try:
            code_root, meta["code"] = prepare_code(args.ref, Path(tmp))
            with Services.start(
                Path(tmp), sim_cpus=sim_cpus, proxy_cpus=proxy_cpus, code_root=code_root
            ) as services:
                meta["affinity"] = {
                    "proxy": services.proxy.affinity(),
                    "sim": services.sim.affinity(),
                    "loadgen": sorted(os.sched_getaffinity(0)),
                }
                bench = Bench(services, plan, proxy_core=None if proxy_cpus is None else cpus[0])
                bench.calibrate()
                loop_run(bench.run())
                meta["affinity"]["proxy_end"] = services.proxy.affinity()
        except ServiceError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
    meta["loadavg_after"] = _loadavg()
    meta["duration_s"] = round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1)

    direct_windows = [w for w in bench.windows if w.target == "direct"]
    report = {
        "meta": meta,
        "calibration": bench.calibration,
        "grid": {mode: bench.grid_rows(mode) for mode in MODES},
        "search": bench.search_rows(),
        "search_steps": bench.search_steps,
        "budget": bench.budget(),
        "memory": bench.memory,
        "proxy_idle_cpu_pct": 100.0
        * sum(w.proxy_cpu_s for w in direct_windows)
        / sum(w.wall_s for w in direct_windows),
        "windows": [w.to_json() for w in bench.windows],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if args.quick else ""
    path = args.out / f"run-{started.strftime('%Y%m%dT%H%M%SZ')}{suffix}.json"
    path.write_text(json.dumps(_clean(report), indent=1, allow_nan=False) + "\n")
    print(render(report))
    print(f"\nfull figures: {path} ({meta['duration_s']:.0f} s run)")
    return 0


def _clean(value: Any) -> Any:
    """``value`` with NaN (an empty percentile) as null, so the file is strict JSON."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


if __name__ == "__main__":
    raise SystemExit(main())
