"""routedeck's overhead benchmark: the proxy against the same simulated upstream called directly,
and against LiteLLM's proxy on the same upstream.

    .venv/bin/python bench/run.py            # the full run, about four minutes (eight with LiteLLM)
    .venv/bin/python bench/run.py --quick    # a smoke check, under a minute
    .venv/bin/python bench/run.py --ref HEAD # measure a commit instead of the working tree
    .venv/bin/python bench/run.py --targets direct,routedeck   # leave LiteLLM out

One run starts the simulated upstream, the proxy and, when ``bench/setup_litellm.sh`` has
installed it, LiteLLM's proxy (`bench.services`), then, for non-streaming and for streaming
requests:

1. warms every target up (not recorded);
2. for each rate of the plan, runs ``rounds`` rounds of open-loop windows (`bench.loadgen`), one
   per target: straight to the simulator ("direct"), through routedeck ("proxy", shown as
   routedeck) and through LiteLLM ("litellm"), rotating which goes first, so that drift in the
   machine's load lands on every target alike; a proxy that lost more than
   `OVERLOAD_ERROR_RATIO` of the requests in every round of a rate is not run at the higher
   rates of the grid;
3. searches for the highest rate each target sustains, rotating targets at each step.

It prints the tables and writes every figure to ``bench/results/run-<UTC time>.json``.
bench/README.md explains each figure and the method. Exit status: 0 when the run completed
(whatever the figures), 1 when a process failed to start or died, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
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
    LITELLM_MODEL,
    REPO,
    SIM_PROFILE,
    Service,
    ServiceError,
    Services,
    code_identity,
    cpu_busy_seconds,
    export_ref,
    litellm_available,
    litellm_config,
    litellm_env,
    litellm_version,
    self_cpu_seconds,
    settle,
    split_cpus,
    write_results,
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
"""The longest wait for the servers to go quiet before a window."""
TARGETS = ("direct", "proxy", "litellm")
"""Every target, in this order: the simulator called directly, routedeck, LiteLLM's proxy."""
LABELS = {"direct": "direct", "proxy": "routedeck", "litellm": "litellm"}
"""What the tables and ``--targets`` call each target (``proxy`` is routedeck)."""
WARMUP_RATE = {"direct": 100.0, "proxy": 100.0, "litellm": 20.0}
"""Warm-up rate per target: LiteLLM's is lower because at 100 streams/s it falls seconds
behind, and the backlog would spill into the next window."""
OVERLOAD_ERROR_RATIO = 0.10
"""A proxy that loses more than this share of the requests in every round of a grid rate is
overloaded there: the grid's higher rates are not run for it (its search still runs)."""
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
    litellm_rates: tuple[float, ...] = ()
    """Rates added to the grid, for every target, when LiteLLM is measured: it saturates a
    core below the grid's first rate when streaming, and the comparison needs a rate where
    every target keeps up."""


FULL = Plan(
    rates=(50, 100, 200, 300, 500),
    rounds=3,
    window_s=2.0,
    min_requests=150,
    warmup_s=2.0,
    ladder=(700, 1000, 1400, 2000, 2800),
    search_window_s=3.0,
    bisections=2,
    litellm_rates=(20,),
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
    litellm_rates=(20,),
)


@dataclass(frozen=True, slots=True)
class _Counters:
    """Cumulative counters read at one instant (seconds)."""

    wall: float
    proxy: float
    litellm: float | None
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
    """routedeck's CPU over the window (whichever target the window measured)."""
    litellm_cpu_s: float | None
    """LiteLLM's CPU (process and children) over the window, when it runs."""
    sim_cpu_s: float
    loadgen_cpu_s: float
    other_cpu_s: float
    """Busy CPU on the machine not spent by the proxies, the simulator or this process: other
    people's work, plus kernel time (softirq) charged to no process."""
    other_proxy_core_s: float | None
    """The part of ``other_cpu_s`` on the proxies' core, when the processes are pinned."""
    wall_s: float
    settle_s: float
    """How long the servers took to go quiet before the window (at most `SETTLE_MAX_S`)."""
    proxy_rss_kib: int
    """routedeck's VmRSS right after the window."""
    litellm_rss_kib: int | None
    """LiteLLM's VmRSS (process and children) right after the window, when it runs."""

    @property
    def server_cpu_s(self) -> float:
        """CPU of the proxy this window measured; routedeck's (idle) in a direct window."""
        if self.target == "litellm":
            assert self.litellm_cpu_s is not None
            return self.litellm_cpu_s
        return self.proxy_cpu_s

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
            "label": LABELS[self.target],
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
            "litellm_cpu_s": self.litellm_cpu_s,
            "sim_cpu_s": self.sim_cpu_s,
            "loadgen_cpu_s": self.loadgen_cpu_s,
            "loadgen_cpu_window_s": r.cpu_s,
            "other_cpu_s": self.other_cpu_s,
            "other_proxy_core_s": self.other_proxy_core_s,
            "settle_s": self.settle_s,
            "proxy_rss_kib": self.proxy_rss_kib,
            "litellm_rss_kib": self.litellm_rss_kib,
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
        # Close enough: within 20/s (half the failing rate below 40/s, where LiteLLM's
        # streams fail) or 8% of the failing rate.
        enough = max(min(20.0, 0.5 * self.fail), 0.08 * self.fail)
        if self.bisections <= 0 or self.fail - self.best <= enough:
            return None
        middle = float(round((self.best + self.fail) / 20) * 10)
        return middle if self.best < middle < self.fail else None

    def record(self, rate: float, ok: bool) -> None:
        self.tried.append((rate, ok))
        if self.fail is not None:
            self.bisections -= 1
        if ok:
            self.best = max(self.best, rate)
        else:
            self.fail = rate if self.fail is None else min(self.fail, rate)


class _TargetDied(Exception):
    """The process of the target a window was to measure is gone (LiteLLM only)."""


class Bench:
    """One benchmark run against running services."""

    def __init__(
        self,
        services: Services,
        plan: Plan,
        proxy_core: int | None = None,
        targets: Sequence[str] | None = None,
    ) -> None:
        """``targets`` default to direct and routedeck, plus LiteLLM when ``services`` runs it;
        they must include ``direct`` and ``proxy``."""
        self.services = services
        self.plan = plan
        self.proxy_core = proxy_core
        """The CPU the proxies are pinned to (routedeck and LiteLLM share it), if they are."""
        if targets is None:
            targets = ("direct", "proxy", "litellm") if services.litellm else ("direct", "proxy")
        unknown = set(targets) - set(TARGETS)
        if unknown or "direct" not in targets or "proxy" not in targets:
            raise ValueError(f"targets must include direct and proxy, from {TARGETS}: {targets}")
        if "litellm" in targets and services.litellm is None:
            raise ValueError("target litellm needs Services started with litellm=True")
        self.targets = tuple(t for t in TARGETS if t in targets)
        extra = plan.litellm_rates if "litellm" in self.targets else ()
        self.rates: tuple[float, ...] = tuple(sorted({*plan.rates, *extra}))
        """The grid's rates: the plan's, and its `Plan.litellm_rates` when LiteLLM is measured."""
        self.windows: list[Window] = []
        self.specs: dict[tuple[str, str], RequestSpec] = {}
        self.calibration: dict[str, Any] = {}
        self.memory: dict[str, Any] = {}
        self.searches: dict[str, dict[str, _Search]] = {}
        self.search_steps: dict[str, list[dict[str, Any]]] = {}
        self.overloaded: dict[str, dict[str, float]] = {}
        """Per mode: the grid rate at which each overloaded proxy stopped being run."""
        self.died: dict[str, dict[str, Any]] = {}
        """LiteLLM, if its process died: the mode, phase and rate of the window it died in (or
        before) and its log's tail. The run goes on without it; routedeck or the simulator
        dying still ends the run."""
        self.proxy_requests = 0
        self.litellm_requests = 0

    @property
    def proxies(self) -> tuple[str, ...]:
        """The proxied targets of this run (``proxy``, and ``litellm`` if measured)."""
        return tuple(t for t in self.targets if t != "direct")

    def _endpoint(self, target: str) -> tuple[int, str]:
        """The port and the model name a request to ``target`` uses."""
        s = self.services
        if target == "direct":
            return s.sim.port, "bench-model"
        if target == "proxy":
            return s.proxy.port, "low"
        assert s.litellm is not None
        return s.litellm.port, LITELLM_MODEL

    # -- setup -----------------------------------------------------------------------------

    def calibrate(self) -> None:
        """Pick a prompt whose answer is ``MAX_TOKENS`` long on every target.

        The simulator derives an answer's length from a hash of the request body it receives,
        and a proxy's upstream body need not be the client's, so without this the targets
        could be timed on answers (and streams) of different lengths. It also checks that
        LiteLLM's requests reach the simulator, one upstream request per request, with the
        very body the direct path sends (the same answer id), streaming and not.
        """
        try:
            chosen, tries = self._find_prompt()
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            raise ServiceError(f"a calibration request failed: {exc!r}") from exc
        self.calibration = chosen
        prompt = chosen["prompt"]
        for mode in MODES:
            stream = mode == "stream"
            for target in self.targets:
                port, model = self._endpoint(target)
                self.specs[(mode, target)] = RequestSpec(
                    "127.0.0.1",
                    port,
                    "/v1/chat/completions",
                    request_body(model, prompt, stream=stream),
                    stream,
                )
        self.proxy_requests += 2 * tries
        if "litellm" in self.targets:
            self.litellm_requests += 2 * tries

    def _find_prompt(self) -> tuple[dict[str, Any], int]:
        sim = self.services.sim
        with httpx.Client(timeout=30.0) as client:

            def upstream_total() -> int:
                stats = client.get(f"{sim.url}/_sim/stats")
                stats.raise_for_status()
                return int(stats.json()["total"])

            for tries in range(1, 65):
                prompt = f"Benchmark prompt {tries}: describe the weather."
                info: dict[str, Any] = {"prompt": prompt}
                for target in self.targets:
                    port, model = self._endpoint(target)
                    url = f"http://127.0.0.1:{port}/v1/chat/completions"
                    before = upstream_total()
                    reply = client.post(
                        url, content=request_body(model, prompt, False), headers=_JSON
                    )
                    reply.raise_for_status()
                    answer = reply.json()
                    info[f"{target}_completion_tokens"] = answer["usage"]["completion_tokens"]
                    info[f"{target}_answer_id"] = answer.get("id")
                    if target == "proxy":
                        info["proxy_tier_header"] = reply.headers.get("x-routedeck-tier")
                    streamed = client.post(
                        url, content=request_body(model, prompt, stream=True), headers=_JSON
                    )
                    streamed.raise_for_status()
                    info[f"{target}_upstream_requests"] = upstream_total() - before
                    info[f"{target}_stream_events"] = streamed.text.count("data: ")
                    info[f"{target}_stream_ends_done"] = streamed.text.rstrip().endswith(
                        "data: [DONE]"
                    )
                    info[f"{target}_stream_bytes"] = len(streamed.content)
                    info[f"{target}_plain_bytes"] = len(reply.content)
                if "litellm" in self.targets:
                    _check_litellm(info)
                if all(info[f"{t}_completion_tokens"] == MAX_TOKENS for t in self.targets):
                    return info, tries
        raise ServiceError(
            f"no prompt among 64 got a {MAX_TOKENS}-token answer from every target "
            f"({', '.join(LABELS[t] for t in self.targets)})"
        )

    # -- measuring -------------------------------------------------------------------------

    async def settle(self, max_s: float = SETTLE_MAX_S) -> float:
        """Wait (at least 0.1 s, at most ``max_s``) until no server is still busy: at most one
        clock tick of CPU between them over 0.1 s. Returns the seconds waited."""
        return await settle(self.services.servers, maximum_s=max_s)

    def _counters(self) -> _Counters:
        s = self.services
        busy = cpu_busy_seconds()
        return _Counters(
            wall=time.perf_counter(),
            proxy=s.proxy.cpu_seconds(),
            litellm=s.litellm.cpu_seconds() if s.litellm else None,
            sim=s.sim.cpu_seconds(),
            loadgen=self_cpu_seconds(),
            busy=sum(busy.values()),
            busy_proxy_core=None if self.proxy_core is None else busy[f"cpu{self.proxy_core}"],
        )

    async def window(
        self, mode: str, target: str, rate: float, *, phase: str, round_: int = 0, seconds: float
    ) -> Window:
        """Settle, run one window at ``rate`` for ``seconds``, and record it (unless it is a
        warm-up). Raises `ServiceError` if a server has died."""
        settle_s = await self.settle()
        litellm = self.services.litellm
        if litellm is not None and not litellm.alive():
            self._bury(litellm, mode, phase, rate)
            if target == "litellm":
                raise _TargetDied(target)
        dead = [s for s in self.services.servers if not s.alive() and s is not litellm]
        if dead:
            raise ServiceError(
                "a benchmarked process died:\n"
                + "\n".join(f"{s.name}:\n{s.log_tail()}" for s in dead)
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
        if target == "litellm" and litellm is not None and not litellm.alive():
            self._bury(litellm, mode, phase, rate)
            raise _TargetDied(target)
        proxy_cpu = b.proxy - a.proxy
        litellm_cpu = None if a.litellm is None or b.litellm is None else b.litellm - a.litellm
        servers_cpu = proxy_cpu + (litellm_cpu or 0.0)
        ours = servers_cpu + (b.sim - a.sim) + (b.loadgen - a.loadgen)
        other_proxy_core = None
        if a.busy_proxy_core is not None and b.busy_proxy_core is not None:
            other_proxy_core = max(0.0, b.busy_proxy_core - a.busy_proxy_core - servers_cpu)
        litellm = self.services.litellm
        w = Window(
            mode=mode,
            target=target,
            rate=rate,
            phase=phase,
            round=round_,
            result=result,
            proxy_cpu_s=proxy_cpu,
            litellm_cpu_s=litellm_cpu,
            sim_cpu_s=b.sim - a.sim,
            loadgen_cpu_s=b.loadgen - a.loadgen,
            other_cpu_s=max(0.0, (b.busy - a.busy) - ours),
            other_proxy_core_s=other_proxy_core,
            wall_s=b.wall - a.wall,
            settle_s=settle_s,
            proxy_rss_kib=self.services.proxy.rss_kib(),
            litellm_rss_kib=litellm.rss_kib() if litellm and litellm.alive() else None,
        )
        if target == "proxy":
            self.proxy_requests += result.planned
        elif target == "litellm":
            self.litellm_requests += result.planned
        if phase != "warmup":
            self.windows.append(w)
        _progress(w)
        return w

    def _bury(self, server: Service, mode: str, phase: str, rate: float) -> None:
        """Record that LiteLLM died and stop running it (in every mode)."""
        if "litellm" in self.died:
            return
        self.died["litellm"] = {
            "mode": mode,
            "phase": phase,
            "rate": rate,
            "exit_status": server.process.poll(),
            "log_tail": server.log_tail(40),
        }
        for m in MODES:
            self.overloaded.setdefault(m, {}).setdefault("litellm", rate)
        print(
            f"  LiteLLM's process died (exit status {server.process.poll()}) by the {mode} "
            f"{phase} window at {rate:.0f}/s: the run goes on without it",
            file=sys.stderr,
            flush=True,
        )

    async def run(self) -> None:
        """Warm up, measure the grid, then search, for each mode; fills the figures."""
        plan = self.plan
        servers = {"proxy": self.services.proxy, "litellm": self.services.litellm}
        memory: dict[str, dict[str, Any]] = {}
        for target in self.proxies:
            server = servers[target]
            assert server is not None
            memory[target] = {"rss_kib_idle": server.rss_kib()}
        for mode in MODES:
            for target in self.targets:
                if target in self.died:
                    continue
                with contextlib.suppress(_TargetDied):
                    await self.window(
                        mode, target, WARMUP_RATE[target], phase="warmup", seconds=plan.warmup_s
                    )
            if mode == MODES[0]:
                for target in self.proxies:
                    server = servers[target]
                    assert server is not None
                    memory[target]["rss_kib_after_warmup"] = server.rss_kib()
            overloaded = self.overloaded.setdefault(mode, {})
            for rate in self.rates:
                seconds = max(plan.window_s, plan.min_requests / rate)
                active = [t for t in self.targets if t not in overloaded]
                for r in range(plan.rounds):
                    for target in _rotated(active, r):
                        if target in self.died:
                            continue
                        with contextlib.suppress(_TargetDied):
                            await self.window(
                                mode, target, rate, phase="grid", round_=r, seconds=seconds
                            )
                for target in active:
                    ws = self.grid_windows(mode, target, rate)
                    if (
                        target != "direct"
                        and ws
                        and all(w.result.error_ratio > OVERLOAD_ERROR_RATIO for w in ws)
                    ):
                        overloaded[target] = rate
                        if rate != self.rates[-1]:
                            print(
                                f"  {LABELS[target]} overloaded at {rate:.0f}/s ({mode}): "
                                "not run at the grid's higher rates",
                                file=sys.stderr,
                                flush=True,
                            )
            await self.search(mode)
        requests = {"proxy": self.proxy_requests, "litellm": self.litellm_requests}
        for target in self.proxies:
            server = servers[target]
            assert server is not None
            if not server.alive():  # LiteLLM died: its RSS after the last window it finished
                last = [w.litellm_rss_kib for w in self.windows if w.litellm_rss_kib is not None]
                memory[target]["rss_kib_end"] = last[-1] if last else None
                memory[target]["hwm_kib_end"] = None
                memory[target]["requests"] = requests[target]
                continue
            memory[target]["rss_kib_end"] = server.rss_kib()
            memory[target]["hwm_kib_end"] = server.hwm_kib()
            memory[target]["requests"] = requests[target]
        # routedeck's figures stay at the top level, as before LiteLLM was measured.
        self.memory = {**memory["proxy"], "proxy_requests": self.proxy_requests}
        if "litellm" in memory:
            self.memory["litellm"] = memory["litellm"]

    async def search(self, mode: str) -> None:
        """Find each target's highest sustained rate, starting from its grid results."""
        searches = {}
        for target in self.targets:
            grid = {
                rate: _sustained(ws)
                for rate in self.rates
                if (ws := self.grid_windows(mode, target, rate))
            }
            if not grid:  # LiteLLM died before this mode's grid
                continue
            searches[target] = _Search.after_grid(grid, self.plan.ladder, self.plan.bisections)
        self.searches[mode] = searches
        steps = self.search_steps.setdefault(mode, [])
        step = 0
        while True:
            todo = [(t, searches[t].next_rate()) for t in _rotated(list(searches), step)]
            todo = [(t, r) for t, r in todo if r is not None]
            if not todo:
                return
            todo = [(t, r) for t, r in todo if t not in self.died]
            if not todo:
                return
            for target, rate in todo:
                assert rate is not None
                if target in self.died:
                    continue
                try:
                    w = await self.window(
                        mode, target, rate, phase="search", seconds=self.plan.search_window_s
                    )
                except _TargetDied:
                    continue
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
        """Per rate: pooled percentiles of every target, each proxy's differences from direct,
        CPU per request, and routedeck / LiteLLM ratios. A target not run at a rate (not
        measured, or overloaded at a lower one) has ``None`` there and NaN percentiles."""
        rows = []
        for rate in self.rates:
            windows = {t: self.grid_windows(mode, t, rate) for t in self.targets}
            direct = windows["direct"]
            row: dict[str, Any] = {"rate": rate}
            for key in ("latency_ms", "ttfb_ms", "send_latency_ms"):
                if key == "ttfb_ms" and mode != "stream":
                    continue
                fig: dict[str, Any] = {
                    t: summarize(x for w in ws for x in getattr(w.result, key))
                    for t, ws in windows.items()
                }
                for target in self.proxies:
                    # "added" and "added_by_round" are routedeck's, "added_litellm"... LiteLLM's.
                    suffix = "" if target == "proxy" else f"_{target}"
                    fig["added" + suffix] = _added(fig["direct"], fig[target])
                    # The spread of the same difference computed round by round.
                    per_round = []
                    for rd in range(self.plan.rounds):
                        dw = [w for w in direct if w.round == rd]
                        pw = [w for w in windows[target] if w.round == rd]
                        if dw and pw:
                            per_round.append(
                                _added(
                                    summarize(x for w in dw for x in getattr(w.result, key)),
                                    summarize(x for w in pw for x in getattr(w.result, key)),
                                )
                            )
                    fig["added_by_round" + suffix] = per_round
                row[key] = fig
            for target, ws in windows.items():
                row[target] = self._target_figures(ws) if ws else None
            if "litellm" in self.targets:
                row["routedeck_over_litellm"] = _ratios(row)
            rows.append(row)
        return rows

    def _target_figures(self, ws: list[Window]) -> dict[str, Any]:
        planned = sum(w.result.planned for w in ws)
        errors = sum(w.result.errors for w in ws)
        answered = sum(w.answered for w in ws)
        wall = sum(w.wall_s for w in ws)
        rounds = sorted(ws, key=lambda w: w.round)
        pinned = self.proxy_core is not None
        return {
            "planned": planned,
            "errors": errors,
            "error_pct": 100.0 * errors / planned if planned else math.nan,
            "achieved_rps": min(w.result.achieved_rps for w in ws),
            "sustained": _sustained(ws),
            # The measured proxy's CPU (routedeck's, idle, in direct windows).
            "proxy_cpu_ms_per_request": 1000.0 * sum(w.server_cpu_s for w in ws) / answered
            if answered
            else math.nan,
            "proxy_cpu_pct": 100.0 * sum(w.server_cpu_s for w in ws) / wall,
            "sim_cpu_ms_per_request": 1000.0 * sum(w.sim_cpu_s for w in ws) / answered
            if answered
            else math.nan,
            "loadgen_cpu_ms_per_request": 1000.0 * sum(w.loadgen_cpu_s for w in ws) / planned,
            "loadgen_cpu_pct": 100.0 * sum(w.loadgen_cpu_s for w in ws) / wall,
            "other_cpu_pct": 100.0 * sum(w.other_cpu_s for w in ws) / wall,
            "other_proxy_core_pct": 100.0 * sum(w.other_proxy_core_s or 0.0 for w in ws) / wall
            if pinned
            else math.nan,
            "other_sim_core_pct": 100.0
            * sum(w.other_cpu_s - (w.other_proxy_core_s or 0.0) for w in ws)
            / wall
            if pinned
            else math.nan,
            "p50_ms_by_round": [percentile(sorted(w.result.latency_ms), 50) for w in rounds],
            "p99_ms_by_round": [percentile(sorted(w.result.latency_ms), 99) for w in rounds],
            "proxy_cpu_ms_per_request_by_round": [
                1000.0 * w.server_cpu_s / w.answered if w.answered else math.nan for w in rounds
            ],
            "send_lag_p99_ms": percentile(sorted(x for w in ws for x in w.result.send_lag_ms), 99),
        }

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
        """Per mode and target: the highest sustained rate, the lowest failing one, the steps;
        with LiteLLM, also routedeck's highest sustained rate over LiteLLM's."""
        out: dict[str, dict[str, Any]] = {}
        for mode, searches in self.searches.items():
            out[mode] = {
                target: {
                    "max_sustained_rps": s.best,
                    "first_failing_rps": s.fail,
                    "tried": s.tried,
                    "top_tried": max([*self.rates, *(r for r, _ in s.tried)]),
                    "overloaded_in_grid_at": self.overloaded.get(mode, {}).get(target),
                }
                for target, s in searches.items()
            }
            if "litellm" in searches:
                out[mode]["routedeck_over_litellm"] = _ratio(
                    searches["proxy"].best, searches["litellm"].best
                )
        return out


def _rotated(targets: Sequence[str], n: int) -> list[str]:
    """``targets`` starting at its ``n``-th (mod its length): for two, every other call swaps
    them; for three, each goes first, second and last once every three calls."""
    k = n % len(targets)
    return [*targets[k:], *targets[:k]]


def _check_litellm(info: dict[str, Any]) -> None:
    """Raise `ServiceError` unless LiteLLM forwarded the calibration requests as it should."""
    problems = []
    if info["litellm_upstream_requests"] != 2:
        problems.append(
            f"{info['litellm_upstream_requests']} upstream requests for 2 requests through LiteLLM"
        )
    if info["litellm_answer_id"] != info["direct_answer_id"]:
        problems.append(
            f"answer {info['litellm_answer_id']} through LiteLLM, {info['direct_answer_id']} "
            "direct: LiteLLM's upstream body is not the client's"
        )
    if not info["litellm_stream_ends_done"]:
        problems.append("LiteLLM's stream does not end with data: [DONE]")
    if problems:
        raise ServiceError("LiteLLM check failed: " + "; ".join(problems))


def _ratio(a: float, b: float) -> float:
    return a / b if b and not math.isnan(a) and not math.isnan(b) else math.nan


def _ratios(row: dict[str, Any]) -> dict[str, float]:
    """routedeck's figure over LiteLLM's, at one grid rate (NaN where either is missing)."""
    proxy, litellm = row["proxy"], row["litellm"]
    out = {}
    for q in ("p50", "p95", "p99"):
        out[f"added_{q}"] = _ratio(
            row["latency_ms"]["added"][q], row["latency_ms"]["added_litellm"][q]
        )
        if "ttfb_ms" in row:
            out[f"added_ttfb_{q}"] = _ratio(
                row["ttfb_ms"]["added"][q], row["ttfb_ms"]["added_litellm"][q]
            )
    out["cpu_ms_per_request"] = (
        _ratio(proxy["proxy_cpu_ms_per_request"], litellm["proxy_cpu_ms_per_request"])
        if proxy and litellm
        else math.nan
    )
    return out


_JSON = {"content-type": "application/json"}


def request_body(model: str, prompt: str, stream: bool) -> bytes:
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
        f"  {w.phase:7} {w.mode:6} {LABELS[w.target]:9} {w.rate:6.0f}/s  ok {r.ok:5}"
        f" err {r.errors:4}  p50 {lat['p50']:7.2f} p99 {lat['p99']:8.2f} ms{extra}"
        f"  proxy cpu {w.server_cpu_s:5.2f}s  other {100 * w.other_cpu_s / w.wall_s:4.0f}%"
        + (
            f" ({100 * w.other_proxy_core_s / w.wall_s:.0f}% on the proxies' core)"
            if w.other_proxy_core_s is not None
            else ""
        ),
        file=sys.stderr,
        flush=True,
    )


# -- report ------------------------------------------------------------------------------------


def cpu_model() -> str:
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
    cal = report["calibration"]
    proxies = [t for t in meta.get("targets", ["direct", "proxy"]) if t != "direct"]
    events = ", ".join(
        f"{cal.get(f'{t}_stream_events')} {'direct' if t == 'direct' else 'through ' + LABELS[t]}"
        for t in ["direct", *proxies]
    )
    lines = [
        f"routedeck bench — {meta['date']} — {meta['nproc']} x {meta['cpu_model']}, "
        f"{meta['pinning']}",
        f"upstream: routedeck sim --profile {SIM_PROFILE}; answers of {MAX_TOKENS} tokens "
        f"(SSE events: {events})",
        "latency = due time (open loop) → last body byte; added = proxy percentile - direct "
        "percentile at the same rate",
    ]
    if meta.get("litellm_version"):
        lines.append(
            f"LiteLLM {meta['litellm_version']}: litellm --config F --num_workers 1, one model on "
            "the simulator, no retries, fallbacks, cache, callbacks, database or master key"
        )
    for target, death in (report.get("died") or {}).items():
        lines.append(
            f"{LABELS[target]}'s process died (exit status {death['exit_status']}) by the "
            f"{death['mode']} {death['phase']} window at {death['rate']:.0f}/s; not run after "
            "that (its log's tail is in the JSON)"
        )
    lines.append("")
    for mode in MODES:
        rows = report["grid"][mode]
        keys = ["latency_ms"] + (["ttfb_ms"] if mode == "stream" else [])
        for key in keys:
            what = {
                "latency_ms": "total",
                "ttfb_ms": "to first body byte (first SSE event)",
            }[key]
            for target in proxies:
                suffix = "" if target == "proxy" else f"_{target}"
                label = LABELS[target]
                lines.append(f"{MODE_TITLES[mode]}, {what}, ms — {label}")
                lines.append(
                    f"       | {'direct':^21} | {label:^21} | {'added':^21} |"
                    f" added p50 / p99 by round"
                )
                lines.append(f"  rate | {_TRIPLE_HEAD} | {_TRIPLE_HEAD} | {_TRIPLE_HEAD} |")
                for row in rows:
                    fig = row[key]
                    if row[target] is None:
                        lines.append(
                            f"  {row['rate']:4.0f} | {_triple(fig['direct'])} | "
                            f"{'not run (overloaded)':^21} |"
                        )
                        continue
                    rounds = ", ".join(
                        f"{a['p50']:.2f}/{a['p99']:.1f}"
                        for a in fig.get("added_by_round" + suffix, [])
                    )
                    lines.append(
                        f"  {row['rate']:4.0f} | {_triple(fig['direct'])} | "
                        f"{_triple(fig[target])} | {_triple(fig['added' + suffix])} | {rounds}"
                    )
                lines.append("")
        for target in proxies:
            label = LABELS[target]
            lines.append(f"{MODE_TITLES[mode]}, errors and CPU — {label} windows unless noted")
            lines.append(
                f"  rate | err% direct {label:>9} | {label} CPU ms/req (by round)  % core | "
                "sim ms/req | loadgen ms/req % core | other load %, direct → proxy windows: "
                "proxies' core, sim core (or all) | send lag p99 ms"
            )
            for row in rows:
                d, p = row["direct"], row[target]
                if p is None:
                    lines.append(f"  {row['rate']:4.0f} | not run (overloaded at a lower rate)")
                    continue
                by_round = "/".join(f"{x:.2f}" for x in p["proxy_cpu_ms_per_request_by_round"])
                if math.isnan(p["other_proxy_core_pct"]):
                    other = f"{d['other_cpu_pct']:3.0f} → {p['other_cpu_pct']:3.0f}"
                else:
                    other = (
                        f"{d['other_proxy_core_pct']:3.0f} → {p['other_proxy_core_pct']:3.0f}, "
                        f"{d['other_sim_core_pct']:3.0f} → {p['other_sim_core_pct']:3.0f}"
                    )
                lines.append(
                    f"  {row['rate']:4.0f} | {_f(d['error_pct'], 10)} {_f(p['error_pct'], 9)} | "
                    f"{_f(p['proxy_cpu_ms_per_request'], 6, 2)} ({by_round:>14}) "
                    f"{_f(p['proxy_cpu_pct'], 7, 1)} | "
                    f"{_f(d['sim_cpu_ms_per_request'], 10, 3)} | "
                    f"{_f(p['loadgen_cpu_ms_per_request'], 14, 3)} "
                    f"{_f(p['loadgen_cpu_pct'], 6, 1)} | "
                    f"{other:>65} | {_f(p['send_lag_p99_ms'], 8)}"
                )
            lines.append("")
        if "litellm" in proxies:
            lines += _comparison(mode, rows)
    lines.append(
        f"highest sustained rate (<{100 * MAX_ERROR_RATIO:.0f}% errors, p99 ≤ {P99_BOUND_MS:.0f} ms, "
        f"achieved ≥ {100 * MIN_ACHIEVED:.0f}% of offered), req/s"
    )
    for mode in MODES:
        cells = []
        for target in ["direct", *proxies]:
            s = report["search"][mode].get(target)
            if s is None:
                cells.append(f"{LABELS[target]} not measured (its process had died)")
                continue
            fail = s["first_failing_rps"]
            bound = f"fails at {fail:.0f}" if fail else f"not reached up to {s['top_tried']:.0f}"
            cells.append(f"{LABELS[target]} {s['max_sustained_rps']:.0f} ({bound})")
        ratio = report["search"][mode].get("routedeck_over_litellm")
        if ratio is not None:
            cells.append(f"routedeck / LiteLLM {_x(ratio)}")
        lines.append(f"  {MODE_TITLES[mode]:14}: " + "; ".join(cells))
        for step in report["search_steps"][mode]:
            other = step["other_proxy_core_pct"]
            lines.append(
                f"      {LABELS[step['target']]:9} {step['rate']:5.0f}/s "
                f"{'sustained' if step['sustained'] else 'FAILED   '}  p99 {step['p99_ms']:8.1f} ms"
                f"  errors {step['error_pct']:5.1f}%"
                + (f"  other load on the proxies' core {other:.0f}%" if other is not None else "")
            )
    mem = report["memory"]
    lines += ["", _memory_line("routedeck", mem, mem["proxy_requests"])]
    if "litellm" in mem:
        lines.append(_memory_line("LiteLLM", mem["litellm"], mem["litellm"]["requests"]))
    lines.append(
        f"proxies' idle CPU (while the direct windows ran): routedeck "
        f"{report['proxy_idle_cpu_pct']:.1f}%"
        + (
            f", LiteLLM {report['litellm_idle_cpu_pct']:.1f}%"
            if report.get("litellm_idle_cpu_pct") is not None
            else ""
        )
        + " of a core"
    )
    lines += [
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


_TRIPLE_HEAD = f"{'p50':>6} {'p95':>6} {'p99':>7}"


def _comparison(mode: str, rows: list[dict[str, Any]]) -> list[str]:
    """routedeck against LiteLLM at each grid rate, with the ratio routedeck / LiteLLM."""
    stream = mode == "stream"
    lines = [
        f"{MODE_TITLES[mode]}, routedeck (r) against LiteLLM (l), ratio r / l",
        "  rate | added p50 ms: r, l, r/l    | added p99 ms: r, l, r/l    | "
        + ("first byte added p50: r, l, r/l | " if stream else "")
        + "CPU ms/req: r, l, r/l   | % of a core: r, l",
    ]
    for row in rows:
        lat, ratio = row["latency_ms"], row["routedeck_over_litellm"]
        cells = [
            _triad(lat["added"]["p50"], lat["added_litellm"]["p50"], ratio["added_p50"]),
            _triad(lat["added"]["p99"], lat["added_litellm"]["p99"], ratio["added_p99"]),
        ]
        if stream:
            ttfb = row["ttfb_ms"]
            cells.append(
                _triad(ttfb["added"]["p50"], ttfb["added_litellm"]["p50"], ratio["added_ttfb_p50"])
                + "   "
            )
        r, lt = row["proxy"], row["litellm"]
        nan = math.nan
        cells.append(
            _triad(
                r["proxy_cpu_ms_per_request"] if r else nan,
                lt["proxy_cpu_ms_per_request"] if lt else nan,
                ratio["cpu_ms_per_request"],
            )
            .rstrip()
            .ljust(23)
        )
        cells.append(
            f"{_f(r['proxy_cpu_pct'] if r else nan, 5, 0)}, "
            f"{_f(lt['proxy_cpu_pct'] if lt else nan, 4, 0)}"
        )
        lines.append(f"  {row['rate']:4.0f} | " + " | ".join(cells))
    lines.append("")
    return lines


def _triad(r: float, lt: float, ratio: float) -> str:
    return f"{_f(r, 7)}, {_f(lt, 7)}, {_x(ratio):>6}"


def _x(ratio: float | None) -> str:
    """A ratio as ``0.12x`` (``-`` when it cannot be computed)."""
    if ratio is None or math.isnan(ratio):
        return "-"
    if abs(ratio) >= 10:
        return f"{ratio:.0f}x"
    return f"{ratio:.2f}x" if abs(ratio) >= 0.1 else f"{ratio:.3f}x"


def _memory_line(label: str, mem: dict[str, Any], requests: int) -> str:
    head = (
        f"{label} memory: VmRSS {mem['rss_kib_idle'] / 1024:.1f} MiB idle, "
        f"{mem['rss_kib_after_warmup'] / 1024:.1f} MiB after warm-up, "
    )
    if mem["hwm_kib_end"] is None:  # the process died during the run
        end = mem["rss_kib_end"]
        last = "unknown" if end is None else f"{end / 1024:.1f} MiB"
        return head + f"{last} after its last measured window; the process died"
    return head + (
        f"{mem['rss_kib_end'] / 1024:.1f} MiB after {requests} requests "
        f"(peak VmHWM {mem['hwm_kib_end'] / 1024:.1f} MiB)"
    )


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


def _parse_targets(text: str | None) -> tuple[list[str], str | None]:
    """The internal target names of ``--targets`` (its default when ``None``), and a note to
    print when LiteLLM is left out only because it is not installed. Raises `ValueError`."""
    if text is None:
        if litellm_available():
            return list(TARGETS), None
        return ["direct", "proxy"], (
            "LiteLLM is not set up, so this run measures direct,routedeck only; "
            "to add LiteLLM's proxy: bash bench/setup_litellm.sh"
        )
    by_label = {label: target for target, label in LABELS.items()} | {"proxy": "proxy"}
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in by_label]
    if unknown:
        raise ValueError(f"unknown target {unknown[0]!r}; choose from {', '.join(LABELS.values())}")
    targets = [by_label[n] for n in names]
    if "direct" not in targets or "proxy" not in targets:
        raise ValueError("--targets must include direct and routedeck")
    if "litellm" in targets and not litellm_available():
        raise ValueError("LiteLLM is not set up: run bash bench/setup_litellm.sh first")
    return [t for t in TARGETS if t in targets], None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Measure routedeck's added latency, throughput, CPU and memory against "
        "the simulated upstream called directly, and against LiteLLM's proxy.",
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
    parser.add_argument(
        "--targets",
        help="comma-separated, from direct,routedeck,litellm (direct and routedeck required); "
        "default: all three when bench/setup_litellm.sh has installed LiteLLM, else "
        "direct,routedeck",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    try:
        targets, note = _parse_targets(args.targets)
    except ValueError as exc:
        parser.error(str(exc))
    with_litellm = "litellm" in targets
    if note:
        print(f"bench: {note}", file=sys.stderr)

    proxy_cpus, sim_cpus, pinning = split_cpus(
        pin=not args.no_pin, servers="proxy and LiteLLM" if with_litellm else "proxy"
    )

    started = dt.datetime.now(dt.UTC)
    meta: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", "bench/run.py", *(argv or sys.argv[1:])]),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "pinning": pinning,
        "targets": targets,
        "loadavg_before": _loadavg(),
        "plan": asdict(plan),
        "rates": sorted({*plan.rates, *(plan.litellm_rates if with_litellm else ())}),
        "p99_bound_ms": P99_BOUND_MS,
        "sim_profile": SIM_PROFILE,
    }
    if with_litellm:
        meta["litellm_version"] = litellm_version()
        meta["litellm_config"] = litellm_config(0).replace(":0/", ":<sim port>/")
        meta["litellm_env"] = {
            k: v for k, v in litellm_env(Path("<tmp>/litellm")).items() if k != "PATH"
        }
    try:
        import uvloop

        loop_run: Any = uvloop.run
        meta["loadgen_loop"] = "uvloop"
    except ImportError:
        loop_run = asyncio.run
        meta["loadgen_loop"] = "asyncio"

    print(
        f"routedeck bench: {', '.join(LABELS[t] for t in targets)}; {pinning}; "
        f"plan {'quick' if args.quick else 'full'}",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(prefix="routedeck-bench-") as tmp:
        try:
            code_root, meta["code"] = prepare_code(args.ref, Path(tmp))
            with Services.start(
                Path(tmp),
                sim_cpus=sim_cpus,
                proxy_cpus=proxy_cpus,
                code_root=code_root,
                litellm=with_litellm,
                litellm_cpus=proxy_cpus,
            ) as services:
                meta["affinity"] = {
                    "proxy": services.proxy.affinity(),
                    "sim": services.sim.affinity(),
                    "loadgen": sorted(os.sched_getaffinity(0)),
                }
                if services.litellm:
                    meta["affinity"]["litellm"] = services.litellm.affinity()
                bench = Bench(
                    services,
                    plan,
                    proxy_core=None if proxy_cpus is None else min(proxy_cpus),
                    targets=targets,
                )
                bench.calibrate()
                loop_run(bench.run())
                meta["affinity"]["proxy_end"] = services.proxy.affinity()
                if services.litellm and services.litellm.alive():
                    meta["affinity"]["litellm_end"] = services.litellm.affinity()
        except ServiceError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
    meta["loadavg_after"] = _loadavg()
    meta["duration_s"] = round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1)

    direct_windows = [w for w in bench.windows if w.target == "direct"]
    direct_wall = sum(w.wall_s for w in direct_windows)
    report = {
        "meta": meta,
        "calibration": bench.calibration,
        "grid": {mode: bench.grid_rows(mode) for mode in MODES},
        "search": bench.search_rows(),
        "search_steps": bench.search_steps,
        "budget": bench.budget(),
        "memory": bench.memory,
        "died": bench.died,
        "proxy_idle_cpu_pct": 100.0 * sum(w.proxy_cpu_s for w in direct_windows) / direct_wall,
        "litellm_idle_cpu_pct": 100.0
        * sum(w.litellm_cpu_s or 0.0 for w in direct_windows)
        / direct_wall
        if with_litellm
        else None,
        "windows": [w.to_json() for w in bench.windows],
    }
    path = write_results(args.out, "run", started, report, quick=args.quick)
    print(render(report))
    print(f"\nfull figures: {path} ({meta['duration_s']:.0f} s run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
