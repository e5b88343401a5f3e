"""What the cost controls cost per request: routedeck with all of them on, with none, and direct.

    .venv/bin/python bench/controls_overhead.py             # the full run, about 3 minutes
    .venv/bin/python bench/controls_overhead.py --quick     # a smoke check, under a minute
    .venv/bin/python bench/controls_overhead.py --profile   # cProfile of both proxies, ~30 s
    .venv/bin/python bench/controls_overhead.py --ref HEAD  # measure a commit, not the tree

One run starts the simulated upstream (as `bench.services` does) and two ``routedeck serve``
processes on it, each with its own SQLite file:

- ``none``: bench/run.py's config (`bench.services.proxy_config`: one OpenAI provider on the
  simulator, deployment ``up-model``, tier ``low``) plus ``[cache] enabled = false``. No quota,
  budget, token cap or cache is configured.
- ``controls``: the same config with every cost control on: ``[tenants.local]`` (the tenant of
  requests without a key) with ``rpm``, ``tpm``, ``daily_budget_usd`` and
  ``monthly_budget_usd`` set far above what the run uses, so nothing is ever refused; tier
  ``low`` with ``max_input_tokens`` (the request is counted with tiktoken on every request) and
  ``max_output_tokens``; and ``[cache] mode = "deterministic"``, bounded high enough that
  nothing is evicted.

Every request, to every target, carries ``"temperature": 0`` and a ``seed`` that the controls
proxy never sees twice, so there each request is looked up in the cache, misses, and its answer
is stored. The three targets of one round get the same seeds, so the simulator receives
equivalent bodies whichever way a request comes. The simulator draws an answer's length (20 to
120 tokens) from a hash of the body, so every request asks for ``max_tokens`` 16: every answer
is then exactly 16 tokens, finish ``length``. The controls proxy's clients ask for 64 and its
tier's ``max_output_tokens = 16`` clamps that to 16 (what ``none`` and direct clients ask for),
so the clamp really acts and the upstream's work is still the same on every path.

Both proxies write the durable per-request spend ledger (``spend``, committed before the answer
is sent) and the request log: routedeck does both whatever the config says. So ``controls``
minus ``none`` is what configuring the controls adds, and each proxy minus ``direct`` is all it
adds.

For each rate, ``rounds`` rounds of one open-loop window (`bench.loadgen`) per target, the
order rotating every round. Only the window's target runs: the other proxies are stopped with
SIGSTOP (after they went quiet) and continued before their own window (``--no-pause`` keeps
them all running). The load generator sends one body per window; `run_unique_window` gives each
request its own body (its own seed) by handing `bench.loadgen.run_window` a pool that writes
request *i*'s bytes.

After the run (the proxies stopped, their stores drained) it reads both SQLite files and checks
that every request sent to each proxy is in ``spend`` (``requests``), in ``requests`` with
``cache = 'miss'`` (``controls``) or ``'bypass'`` (``none``) and 16 output tokens, and, for
``controls``, has a row in ``cache``.

It prints the tables and writes every figure to
``bench/results/controls-overhead-<UTC time>.json``; bench/README.md explains the method.
Exit status: 0 when the run completed and the state files check out, 1 when a process failed
or the check did not pass, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import importlib.metadata
import math
import os
import platform
import pstats
import signal
import sqlite3
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import orjson

if not __package__:  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import loadgen
from bench.loadgen import RequestSpec, WindowResult, percentile, run_window, summarize
from bench.profile_proxy import component
from bench.run import prepare_code
from bench.services import (
    SIM_PROFILE,
    Service,
    ServiceError,
    cpu_busy_seconds,
    launch,
    proxy_config,
    self_cpu_seconds,
    settle,
    write_results,
)

RESULTS = Path(__file__).resolve().parent / "results"
HELPER = Path(__file__).resolve().parent / "profiled_serve.py"
TARGETS = ("direct", "none", "controls")
PROXIES = ("none", "controls")
MODES = ("plain", "stream")
MODE_TITLES = {"plain": "non-streaming", "stream": "streaming"}
MODEL = {"direct": "bench-model", "none": "low", "controls": "low"}

ANSWER_TOKENS = 16
"""Every answer's length: below the simulator's shortest answer (20 tokens), so exact."""
CONTROLS_ASKED_TOKENS = 64
"""What the controls proxy's clients ask for; its tier clamps it to `ANSWER_TOKENS`."""
MAX_TOKENS = {"direct": ANSWER_TOKENS, "none": ANSWER_TOKENS, "controls": CONTROLS_ASKED_TOKENS}
PROMPT = "Benchmark prompt: describe the weather in one short paragraph."
SEED_BASE = 100_000_000
"""Seeds count up from here: nine digits, so every body of a window has the same length."""
SETTLE_MAX_S = 5.0

_TIER = '[tiers.low]\ndeployments = ["up-model"]\n'
CONTROLS_TIER = "max_input_tokens = 8000\nmax_output_tokens = 16\n"
CONTROLS_TABLES = """
[tenants.local]
rpm = 1000000
tpm = 1000000000
daily_budget_usd = 1000.0
monthly_budget_usd = 10000.0

[cache]
enabled = true
mode = "deterministic"
ttl_s = 3600.0
max_entries = 1000000
max_bytes = 1073741824
"""
NONE_TABLES = """
[cache]
enabled = false
"""


def config_text(kind: str, sim_port: int, state_path: Path) -> str:
    """The routedeck config of proxy ``kind``: bench/run.py's, with or without the controls."""
    base = proxy_config(sim_port, state_path)
    if kind == "none":
        return base + NONE_TABLES
    if _TIER not in base:
        raise ServiceError("bench.services.proxy_config no longer has the tier this file extends")
    return base.replace(_TIER, _TIER + CONTROLS_TIER) + CONTROLS_TABLES


def body(target: str, seed: int, *, stream: bool) -> bytes:
    """The request body for ``target``: the same on every path but for model and max_tokens."""
    out: dict[str, Any] = {
        "model": MODEL[target],
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": MAX_TOKENS[target],
        "temperature": 0,
        "seed": seed,
    }
    if stream:
        # routedeck always asks its upstream for usage; so do the direct requests.
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return orjson.dumps(out)


@dataclass(frozen=True, slots=True)
class Plan:
    """Rates, rounds and window lengths of a run."""

    plain_rates: tuple[float, ...]
    stream_rates: tuple[float, ...]
    rounds: int
    window_s: float
    min_requests: int
    """A window lasts at least this many requests (so p99 rests on a few samples)."""
    warmup_s: float
    warmup_rate: float

    def rates(self, mode: str) -> tuple[float, ...]:
        return self.plain_rates if mode == "plain" else self.stream_rates


FULL = Plan(
    plain_rates=(50, 100, 200, 300),
    stream_rates=(50, 100),
    rounds=3,
    window_s=2.0,
    min_requests=150,
    warmup_s=1.5,
    warmup_rate=100,
)
QUICK = Plan(
    plain_rates=(100, 300),
    stream_rates=(100,),
    rounds=1,
    window_s=1.0,
    min_requests=50,
    warmup_s=0.5,
    warmup_rate=100,
)


# -- a body per request ------------------------------------------------------------------------


class _PerRequestPool(loadgen._Pool):
    """`bench.loadgen`'s connection pool, writing request ``i``'s own bytes ``wires[i]``."""

    def __init__(
        self,
        spec: RequestSpec,
        window: loadgen._Window,
        max_connections: int,
        wires: Sequence[bytes],
    ) -> None:
        super().__init__(spec, window, max_connections)
        self._wires = wires

    def submit(self, i: int) -> None:
        if self._idle:
            self._idle.pop().send(i, self._wires[i])
            return
        self._waiting.append(i)
        self._grow()

    def release(self, conn: loadgen._Connection) -> None:
        if self._waiting:
            i = self._waiting.popleft()
            conn.send(i, self._wires[i])
        else:
            self._idle.append(conn)


async def run_unique_window(
    specs: Sequence[RequestSpec],
    *,
    rate: float,
    on_start: Callable[[], None] | None = None,
    on_stop: Callable[[], None] | None = None,
) -> WindowResult:
    """`bench.loadgen.run_window` at ``rate``, request ``i`` being ``specs[i]`` (same host,
    port, path and streaming for all): the same open-loop schedule, pool and clocks.

    ``run_window`` sends one body per window and builds its pool by name when called, so for
    the duration of this call only, that name is bound to a pool that writes ``specs[i]``."""
    wires = [s.wire() for s in specs]

    def pool(spec: RequestSpec, window: loadgen._Window, max_connections: int) -> loadgen._Pool:
        return _PerRequestPool(spec, window, max_connections, wires)

    with mock.patch.object(loadgen, "_Pool", pool):
        result = await run_window(
            specs[0], rate=rate, duration_s=len(specs) / rate, on_start=on_start, on_stop=on_stop
        )
    if result.planned != len(specs):
        raise RuntimeError(f"the window planned {result.planned} requests, not {len(specs)}")
    return result


# -- processes ---------------------------------------------------------------------------------


@dataclass
class Processes:
    """The simulator and the two proxies, with the proxies' state files and configs."""

    sim: Service
    proxies: dict[str, Service]
    state_files: dict[str, Path]
    configs: dict[str, str]

    def by_target(self, target: str) -> Service | None:
        return self.proxies.get(target)

    def all(self) -> list[Service]:
        return [self.sim, *self.proxies.values()]


@contextmanager
def start_processes(
    workdir: Path,
    *,
    code_root: Path,
    sim_cpus: set[int] | None,
    proxy_cpus: set[int] | None,
    proxy_head: Callable[[str], list[str]] | None = None,
) -> Iterator[Processes]:
    """Start the simulator and both proxies; on exit continue (SIGCONT) and stop them all.

    ``proxy_head(kind)`` replaces ``python -m console.cli`` in the proxy's command line."""
    python = sys.executable
    sim = launch(
        "sim",
        [
            python,
            "-m",
            "providers.sim",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--seed",
            "0",
            "--profile",
            SIM_PROFILE,
        ],
        workdir,
        sim_cpus,
        30.0,
        code_root,
    )
    proxies: dict[str, Service] = {}
    try:
        states: dict[str, Path] = {}
        configs: dict[str, str] = {}
        for kind in PROXIES:
            states[kind] = workdir / f"{kind}.db"
            configs[kind] = config_text(kind, sim.port, states[kind])
            path = workdir / f"{kind}.toml"
            path.write_text(configs[kind])
            head = proxy_head(kind) if proxy_head else [python, "-m", "console.cli"]
            proxies[kind] = launch(
                f"proxy-{kind}",
                [*head, "serve", "--config", str(path), "--port", "0"],
                workdir,
                proxy_cpus,
                30.0,
                code_root,
            )
        yield Processes(sim, proxies, states, configs)
    finally:
        for proxy in proxies.values():
            proxy.signal(signal.SIGCONT)  # a stopped process would not act on SIGTERM
        for proxy in proxies.values():
            proxy.stop()
        sim.stop()


# -- measuring ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Marks:
    wall: float
    proxies: dict[str, float]
    loop: float
    """CPU of the target proxy's main thread (its event loop); 0 for direct."""
    sim: float
    loadgen: float
    busy: dict[str, float]


@dataclass(slots=True)
class Window:
    """One measured window and the processes' counters over the same span."""

    mode: str
    target: str
    rate: float
    phase: str
    """``warmup`` or ``grid``."""
    round: int
    first_seed: int
    result: WindowResult
    proxy_cpu_s: float
    """CPU of the target proxy, all threads (0 for direct)."""
    proxy_loop_cpu_s: float
    """... of which its main thread, the event loop (the rest: the SQLite thread)."""
    idle_proxies_cpu_s: float
    """CPU of the proxies that were not the target (stopped, unless ``--no-pause``)."""
    sim_cpu_s: float
    loadgen_cpu_s: float
    other_cpu_s: float
    """Busy CPU not spent by our processes: other people's work and softirq time."""
    other_proxy_core_s: float | None
    other_sim_core_s: float | None
    wall_s: float
    settle_s: float
    rss_kib: int | None
    """The target proxy's VmRSS right after the window."""

    @property
    def answered(self) -> int:
        """Responses the target sent (successes plus error statuses and cut streams)."""
        r = self.result
        lost = sum(v for k, v in r.error_kinds.items() if not k.startswith(("http_", "incomplete")))
        return r.planned - lost

    @property
    def sent(self) -> int:
        """Requests written to a socket."""
        return len(self.result.send_lag_ms)

    def to_json(self) -> dict[str, Any]:
        r = self.result
        return {
            "mode": self.mode,
            "target": self.target,
            "rate": self.rate,
            "phase": self.phase,
            "round": self.round,
            "first_seed": self.first_seed,
            "planned": r.planned,
            "sent": self.sent,
            "ok": r.ok,
            "errors": r.errors,
            "error_kinds": r.error_kinds,
            "achieved_rps": r.achieved_rps,
            "latency_ms": summarize(r.latency_ms),
            "send_latency_ms": summarize(r.send_latency_ms),
            "ttfb_ms": summarize(r.ttfb_ms) if r.ttfb_ms else None,
            "send_lag_ms": summarize(r.send_lag_ms),
            "connections": r.connections,
            "max_in_flight": r.max_in_flight,
            "wall_s": self.wall_s,
            "proxy_cpu_s": self.proxy_cpu_s,
            "proxy_loop_cpu_s": self.proxy_loop_cpu_s,
            "idle_proxies_cpu_s": self.idle_proxies_cpu_s,
            "sim_cpu_s": self.sim_cpu_s,
            "loadgen_cpu_s": self.loadgen_cpu_s,
            "other_cpu_s": self.other_cpu_s,
            "other_proxy_core_s": self.other_proxy_core_s,
            "other_sim_core_s": self.other_sim_core_s,
            "settle_s": self.settle_s,
            "rss_kib": self.rss_kib,
        }


class Bench:
    """One run against running processes."""

    def __init__(
        self,
        procs: Processes,
        plan: Plan,
        *,
        cores: tuple[int, int] | None,
        pause: bool,
    ) -> None:
        self.procs = procs
        self.plan = plan
        self.cores = cores
        """(proxy core, simulator core) when the processes are pinned."""
        self.pause = pause
        self.windows: list[Window] = []
        self.sent: dict[str, int] = dict.fromkeys(PROXIES, 0)
        """Requests written to each proxy, checks and warm-ups included."""
        self.memory: dict[str, dict[str, int]] = {kind: {} for kind in PROXIES}
        self.check_info: dict[str, Any] = {}
        self._next_seed = SEED_BASE

    def seeds(self, n: int) -> range:
        """``n`` seeds never handed out before in this run."""
        out = range(self._next_seed, self._next_seed + n)
        self._next_seed += n
        return out

    # -- before the windows ----------------------------------------------------------------

    def check(self, per_target: int = 4) -> None:
        """Send a few requests of each kind to each target and check the answers: 200, exactly
        `ANSWER_TOKENS` tokens, and the cache header each proxy should send. Raises
        `ServiceError` otherwise."""
        info: dict[str, Any] = {}
        with httpx.Client(timeout=10.0) as client:
            for target in TARGETS:
                port = self._port(target)
                url = f"http://127.0.0.1:{port}/v1/chat/completions"
                for mode in MODES:
                    stream = mode == "stream"
                    tokens: list[int | None] = []
                    events: list[int] = []
                    cache: list[str | None] = []
                    for seed in self.seeds(per_target):
                        try:
                            reply = client.post(
                                url,
                                content=body(target, seed, stream=stream),
                                headers={"content-type": "application/json"},
                            )
                        except httpx.HTTPError as exc:
                            raise ServiceError(
                                f"a check request to {target} failed: {exc!r}"
                            ) from exc
                        if target in PROXIES:
                            self.sent[target] += 1
                        if reply.status_code != 200:
                            raise ServiceError(
                                f"a check request to {target} got {reply.status_code}: "
                                f"{reply.text[:300]}"
                            )
                        cache.append(reply.headers.get("x-routedeck-cache"))
                        if stream:
                            chunks = _sse_data(reply.text)
                            events.append(len(chunks))
                            usage = [c["usage"] for c in chunks if c.get("usage")]
                            tokens.append(usage[-1]["completion_tokens"] if usage else None)
                        else:
                            tokens.append(reply.json()["usage"]["completion_tokens"])
                    info[f"{target}/{mode}"] = {
                        "completion_tokens": tokens,
                        "sse_events": events or None,
                        "x_routedeck_cache": cache if target in PROXIES else None,
                    }
                    if any(t != ANSWER_TOKENS for t in tokens):
                        raise ServiceError(
                            f"{target} {mode}: answers of {tokens} tokens, not {ANSWER_TOKENS}"
                        )
                    want = {"none": "bypass", "controls": "miss"}.get(target)
                    if want is not None and any(c != want for c in cache):
                        raise ServiceError(f"{target}: x-routedeck-cache {cache}, not {want!r}")
        self.check_info = info

    # -- windows ---------------------------------------------------------------------------

    def _port(self, target: str) -> int:
        proxy = self.procs.by_target(target)
        return self.procs.sim.port if proxy is None else proxy.port

    def _running(self) -> list[Service]:
        return [p for p in self.procs.all() if p.alive() and not _stopped(p)]

    async def settle(self, max_s: float = SETTLE_MAX_S) -> float:
        """Wait (at least 0.1 s, at most ``max_s``) until no running process is busy: at most
        one clock tick of CPU between them over 0.1 s. Returns the seconds waited."""
        return await settle(self._running(), maximum_s=max_s)

    def activate(self, target: str) -> None:
        """Continue the target's proxy; stop the others (with pausing on)."""
        for kind, proxy in self.procs.proxies.items():
            if kind == target or not self.pause:
                proxy.signal(signal.SIGCONT)
            else:
                proxy.signal(signal.SIGSTOP)

    def resume_all(self) -> None:
        for proxy in self.procs.proxies.values():
            proxy.signal(signal.SIGCONT)

    def _marks(self, target: str) -> _Marks:
        procs = self.procs
        proxy = procs.by_target(target)
        loop = 0.0
        if proxy is not None:
            threads = proxy.thread_cpu_seconds()
            loop = sum(v for k, v in threads.items() if k.endswith(f"/{proxy.pid}"))
        return _Marks(
            wall=time.perf_counter(),
            proxies={k: p.cpu_seconds() for k, p in procs.proxies.items()},
            loop=loop,
            sim=procs.sim.cpu_seconds(),
            loadgen=self_cpu_seconds(),
            busy=cpu_busy_seconds(),
        )

    async def window(
        self,
        mode: str,
        target: str,
        rate: float,
        seeds: range,
        *,
        phase: str,
        round_: int = 0,
    ) -> Window:
        """Settle, run one window of ``len(seeds)`` requests at ``rate`` on ``target``, record
        it. Raises `ServiceError` if a process has died."""
        settle_s = await self.settle()  # the previous target finishes its backlog running
        self.activate(target)
        settle_s += await self.settle()
        dead = [p for p in self.procs.all() if not p.alive()]
        if dead:
            raise ServiceError(
                "a benchmarked process died:\n" + "\n".join(p.log_tail() for p in dead)
            )
        stream = mode == "stream"
        port = self._port(target)
        specs = [
            RequestSpec(
                "127.0.0.1", port, "/v1/chat/completions", body(target, s, stream=stream), stream
            )
            for s in seeds
        ]
        marks: list[_Marks] = []
        result = await run_unique_window(
            specs,
            rate=rate,
            on_start=lambda: marks.append(self._marks(target)),
            on_stop=lambda: marks.append(self._marks(target)),
        )
        a, b = marks
        proxy = self.procs.by_target(target)
        proxy_cpu = b.proxies[target] - a.proxies[target] if proxy is not None else 0.0
        idle = sum(b.proxies[k] - a.proxies[k] for k in PROXIES if k != target)
        sim_cpu = b.sim - a.sim
        loadgen_cpu = b.loadgen - a.loadgen
        all_proxies = proxy_cpu + idle
        busy = sum(b.busy.values()) - sum(a.busy.values())
        other_proxy_core = other_sim_core = None
        if self.cores is not None:
            pc, sc = (f"cpu{c}" for c in self.cores)
            other_proxy_core = max(0.0, b.busy[pc] - a.busy[pc] - all_proxies)
            other_sim_core = max(0.0, b.busy[sc] - a.busy[sc] - sim_cpu - loadgen_cpu)
        w = Window(
            mode=mode,
            target=target,
            rate=rate,
            phase=phase,
            round=round_,
            first_seed=seeds.start,
            result=result,
            proxy_cpu_s=proxy_cpu,
            proxy_loop_cpu_s=b.loop - a.loop,
            idle_proxies_cpu_s=idle,
            sim_cpu_s=sim_cpu,
            loadgen_cpu_s=loadgen_cpu,
            other_cpu_s=max(0.0, busy - all_proxies - sim_cpu - loadgen_cpu),
            other_proxy_core_s=other_proxy_core,
            other_sim_core_s=other_sim_core,
            wall_s=b.wall - a.wall,
            settle_s=settle_s,
            rss_kib=proxy.rss_kib() if proxy is not None else None,
        )
        if proxy is not None:
            self.sent[target] += w.sent
        self.windows.append(w)
        _progress(w)
        return w

    async def run(self) -> None:
        """Warm up each target, then the rounds at every rate, for each mode."""
        plan = self.plan
        for kind, proxy in self.procs.proxies.items():
            self.memory[kind]["rss_kib_idle"] = proxy.rss_kib()
        for mode in MODES:
            n = max(1, round(plan.warmup_rate * plan.warmup_s))
            for target in TARGETS:
                await self.window(mode, target, plan.warmup_rate, self.seeds(n), phase="warmup")
            if mode == MODES[0]:
                for kind, proxy in self.procs.proxies.items():
                    self.memory[kind]["rss_kib_after_warmup"] = proxy.rss_kib()
            for rate in plan.rates(mode):
                n = max(1, round(rate * max(plan.window_s, plan.min_requests / rate)))
                for r in range(plan.rounds):
                    seeds = self.seeds(n)  # one block per round, shared by the three targets
                    k = r % len(TARGETS)
                    for target in TARGETS[k:] + TARGETS[:k]:
                        await self.window(mode, target, rate, seeds, phase="grid", round_=r)
        self.resume_all()
        await self.settle()
        for kind, proxy in self.procs.proxies.items():
            self.memory[kind]["rss_kib_end"] = proxy.rss_kib()
            self.memory[kind]["hwm_kib_end"] = proxy.hwm_kib()
            self.memory[kind]["requests"] = self.sent[kind]

    # -- figures ---------------------------------------------------------------------------

    def grid(self, mode: str, target: str, rate: float, round_: int | None = None) -> list[Window]:
        return [
            w
            for w in self.windows
            if w.phase == "grid"
            and w.mode == mode
            and w.target == target
            and w.rate == rate
            and (round_ is None or w.round == round_)
        ]

    def rows(self, mode: str) -> list[dict[str, Any]]:
        """Per rate: pooled percentiles per target, the differences, CPU per request."""
        rows = []
        keys = ("latency_ms", "send_latency_ms") + (("ttfb_ms",) if mode == "stream" else ())
        for rate in self.plan.rates(mode):
            row: dict[str, Any] = {"rate": rate}
            for key in keys:
                s = {t: _pooled(self.grid(mode, t, rate), key) for t in TARGETS}
                by_round = []
                for r in range(self.plan.rounds):
                    sr = {t: _pooled(self.grid(mode, t, rate, r), key) for t in TARGETS}
                    by_round.append(_differences(sr))
                row[key] = {"by_target": s, "added": _differences(s), "added_by_round": by_round}
            for target in TARGETS:
                ws = self.grid(mode, target, rate)
                planned = sum(w.result.planned for w in ws)
                errors = sum(w.result.errors for w in ws)
                answered = sum(w.answered for w in ws)
                wall = sum(w.wall_s for w in ws)
                cpu = sum(w.proxy_cpu_s for w in ws)
                loop = sum(w.proxy_loop_cpu_s for w in ws)
                kinds: dict[str, int] = defaultdict(int)
                for w in ws:
                    for k, v in w.result.error_kinds.items():
                        kinds[k] += v
                row[target] = {
                    "planned": planned,
                    "errors": errors,
                    "error_kinds": dict(kinds),
                    "achieved_rps_min": min(w.result.achieved_rps for w in ws),
                    "proxy_cpu_ms_per_request": 1000.0 * cpu / answered if answered else math.nan,
                    "proxy_loop_cpu_ms_per_request": 1000.0 * loop / answered
                    if answered
                    else math.nan,
                    "proxy_cpu_pct": 100.0 * cpu / wall,
                    "proxy_cpu_ms_per_request_by_round": [
                        1000.0 * w.proxy_cpu_s / w.answered if w.answered else math.nan
                        for w in sorted(ws, key=lambda w: w.round)
                    ],
                    "idle_proxies_cpu_pct": 100.0 * sum(w.idle_proxies_cpu_s for w in ws) / wall,
                    "sim_cpu_ms_per_request": 1000.0 * sum(w.sim_cpu_s for w in ws) / answered
                    if answered
                    else math.nan,
                    "loadgen_cpu_ms_per_request": 1000.0
                    * sum(w.loadgen_cpu_s for w in ws)
                    / planned,
                    "other_cpu_pct": 100.0 * sum(w.other_cpu_s for w in ws) / wall,
                    "other_proxy_core_pct": _pct(ws, "other_proxy_core_s", wall),
                    "other_sim_core_pct": _pct(ws, "other_sim_core_s", wall),
                    "send_lag_p99_ms": percentile(
                        sorted(x for w in ws for x in w.result.send_lag_ms), 99
                    ),
                }
            rows.append(row)
        return rows


def _stopped(service: Service) -> bool:
    """Whether the process is stopped (SIGSTOP): state ``T`` in ``/proc/<pid>/stat``."""
    try:
        with open(f"/proc/{service.pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return False
    return raw[raw.rindex(b")") + 2 :].split()[0] in (b"T", b"t")


def _sse_data(text: str) -> list[dict[str, Any]]:
    """The JSON objects of an SSE body's ``data:`` lines (``[DONE]`` left out)."""
    out = []
    for line in text.splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            value = orjson.loads(line[6:])
            if isinstance(value, dict):
                out.append(value)
    return out


def _pooled(windows: Sequence[Window], key: str) -> dict[str, float]:
    return summarize(x for w in windows for x in getattr(w.result, key))


def _minus(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {q: a[q] - b[q] for q in ("p50", "p90", "p95", "p99", "mean")}


def _differences(s: dict[str, dict[str, float]]) -> dict[str, dict[str, float]]:
    return {
        "none": _minus(s["none"], s["direct"]),
        "controls": _minus(s["controls"], s["direct"]),
        "controls_vs_none": _minus(s["controls"], s["none"]),
    }


def _pct(windows: Sequence[Window], attr: str, wall: float) -> float:
    values: list[float | None] = [getattr(w, attr) for w in windows]
    known = [v for v in values if v is not None]
    if len(known) < len(values):
        return math.nan
    return 100.0 * sum(known) / wall


def _progress(w: Window) -> None:
    r = w.result
    lat = summarize(r.latency_ms)
    cpu = f"  cpu {1000 * w.proxy_cpu_s / w.answered:5.2f} ms/req" if w.answered else ""
    print(
        f"  {w.phase:6} {w.mode:6} {w.target:8} {w.rate:5.0f}/s r{w.round}  ok {r.ok:4} "
        f"err {r.errors:3}  p50 {lat['p50']:7.2f} p99 {lat['p99']:8.2f} ms"
        + (cpu if w.target in PROXIES else "")
        + f"  other {100 * w.other_cpu_s / w.wall_s:3.0f}%",
        file=sys.stderr,
        flush=True,
    )


# -- checking the state files ------------------------------------------------------------------


def verify_state(kind: str, path: Path, sent: int) -> dict[str, Any]:
    """What proxy ``kind``'s SQLite file says about the ``sent`` requests, and whether it shows
    that the controls ran on every one of them (``problems`` empty)."""
    con = sqlite3.connect(path)
    try:

        def one(sql: str) -> Any:
            return con.execute(sql).fetchone()

        def by(sql: str) -> dict[str, int]:
            return {str(k): int(v) for k, v in con.execute(sql).fetchall()}

        spend = one(
            "SELECT coalesce(sum(requests), 0), coalesce(sum(cache_hits), 0), "
            "coalesce(sum(output_tokens), 0), coalesce(sum(unpriced_requests), 0), "
            "coalesce(sum(cost_usd), 0) FROM spend"
        )
        found: dict[str, Any] = {
            "requests_sent": sent,
            "spend_requests": int(spend[0]),
            "spend_cache_hits": int(spend[1]),
            "spend_output_tokens": int(spend[2]),
            "spend_unpriced_requests": int(spend[3]),
            "spend_cost_usd": float(spend[4]),
            "request_rows": int(one("SELECT count(*) FROM requests")[0]),
            "request_rows_by_cache": by("SELECT cache, count(*) FROM requests GROUP BY cache"),
            "request_rows_by_status": by("SELECT status, count(*) FROM requests GROUP BY status"),
            "request_rows_by_output_tokens": by(
                "SELECT output_tokens, count(*) FROM requests GROUP BY output_tokens"
            ),
            "cache_rows": int(one("SELECT count(*) FROM cache")[0]),
            "cache_rows_distinct_keys": int(one("SELECT count(DISTINCT key) FROM cache")[0]),
        }
        # Where each request's time went, as the proxy logged it: its upstream attempt, and
        # the rest of its time in the engine (before the attempt and after it: settle, ledger,
        # cache store), HTTP parsing and writing the answer excluded.
        split = con.execute(
            "SELECT a.latency_ms, r.latency_ms - a.latency_ms FROM requests r "
            "JOIN attempts a ON a.request_id = r.request_id AND a.attempt = 1"
        ).fetchall()
        found["upstream_attempt_ms"] = summarize(float(u) for u, _ in split)
        found["engine_ms_outside_upstream"] = summarize(float(e) for _, e in split)
        found["engine_ms_outside_upstream_over_50"] = sum(1 for _, e in split if e > 50)
    finally:
        con.close()
    want_cache = "miss" if kind == "controls" else "bypass"
    expected: dict[str, Any] = {
        "spend_requests": sent,
        "spend_cache_hits": 0,
        "spend_output_tokens": ANSWER_TOKENS * sent,
        "spend_unpriced_requests": 0,
        "request_rows": sent,
        "request_rows_by_cache": {want_cache: sent},
        "request_rows_by_status": {"200": sent},
        "request_rows_by_output_tokens": {str(ANSWER_TOKENS): sent},
        "cache_rows": sent if kind == "controls" else 0,
    }
    found["expected"] = expected
    found["problems"] = [
        f"{key}: {found[key]} (expected {value})"
        for key, value in expected.items()
        if found[key] != value
    ]
    return found


# -- report ------------------------------------------------------------------------------------


def _f(x: float, width: int = 6, digits: int = 2) -> str:
    return f"{x:{width}.{digits}f}" if not math.isnan(x) else f"{'-':>{width}}"


def _triple(s: dict[str, float]) -> str:
    return f"{_f(s['p50'])} {_f(s['p95'])} {_f(s['p99'], 7)}"


def render(report: dict[str, Any]) -> str:
    """The human-readable tables of a report (as written to JSON by `main`)."""
    meta = report["meta"]
    lines = [
        f"routedeck cost-controls overhead — {meta['date']} — {meta['nproc']} x "
        f"{meta['cpu_model']}, {meta['pinning']}, {meta['pausing']}",
        f"upstream: routedeck sim --profile {SIM_PROFILE}; every answer {ANSWER_TOKENS} tokens; "
        "every request temperature 0 and a seed of its own",
        "latency from the due time (open loop); added = target percentile - direct percentile",
        "",
    ]
    for mode in MODES:
        rows = report["grid"][mode]
        if not rows:
            continue
        for key in ("latency_ms",) + (("ttfb_ms",) if mode == "stream" else ()):
            what = "total" if key == "latency_ms" else "to first body byte"
            lines += [
                f"{MODE_TITLES[mode]}, {what}, ms",
                "  rate |  direct p50    p95     p99 |   none +p50   +p95    +p99 |"
                "  contr +p50   +p95    +p99 | contr-none p50  p95     p99 | by round +p50/+p99 "
                "none; controls",
            ]
            for row in rows:
                fig = row[key]
                d, added = fig["by_target"]["direct"], fig["added"]
                rounds = ", ".join(
                    f"{a['none']['p50']:.2f}/{a['none']['p99']:.1f}" for a in fig["added_by_round"]
                )
                rounds += "; " + ", ".join(
                    f"{a['controls']['p50']:.2f}/{a['controls']['p99']:.1f}"
                    for a in fig["added_by_round"]
                )
                lines.append(
                    f"  {row['rate']:4.0f} | {_triple(d)}     | {_triple(added['none'])}     | "
                    f"{_triple(added['controls'])}     | {_triple(added['controls_vs_none'])}"
                    f"     | {rounds}"
                )
            lines.append("")
        lines += [
            f"{MODE_TITLES[mode]}, CPU and errors",
            "  rate | proxy CPU ms/req none  controls  (+)   | event loop none controls | "
            "% core none controls | sim ms/req d/n/c | errors d/n/c | other % proxy core "
            "d/n/c, sim core d/n/c",
        ]
        for row in rows:
            n, c = row["none"], row["controls"]
            sim = "/".join(f"{row[t]['sim_cpu_ms_per_request']:.2f}" for t in TARGETS)
            errors = "/".join(str(row[t]["errors"]) for t in TARGETS)
            other = "/".join(f"{row[t]['other_proxy_core_pct']:.0f}" for t in TARGETS)
            other += ", " + "/".join(f"{row[t]['other_sim_core_pct']:.0f}" for t in TARGETS)
            lines.append(
                f"  {row['rate']:4.0f} | {_f(n['proxy_cpu_ms_per_request'], 18)} "
                f"{_f(c['proxy_cpu_ms_per_request'], 9)} "
                f"{_f(c['proxy_cpu_ms_per_request'] - n['proxy_cpu_ms_per_request'], 6)}   | "
                f"{_f(n['proxy_loop_cpu_ms_per_request'], 15)} "
                f"{_f(c['proxy_loop_cpu_ms_per_request'], 8)} | "
                f"{_f(n['proxy_cpu_pct'], 11, 0)} {_f(c['proxy_cpu_pct'], 8, 0)} | "
                f"{sim:>16} | {errors:>12} | {other}"
            )
        lines.append("")
    mem = report["memory"]
    lines.append("proxy memory (VmRSS MiB): idle, after warm-up, end (VmHWM), requests served")
    for kind in PROXIES:
        m = mem[kind]
        lines.append(
            f"  {kind:8} {m['rss_kib_idle'] / 1024:6.1f} {m['rss_kib_after_warmup'] / 1024:6.1f} "
            f"{m['rss_kib_end'] / 1024:6.1f} ({m['hwm_kib_end'] / 1024:.1f})  {m['requests']}"
        )
    lines += ["", "state files after the run:"]
    for kind in PROXIES:
        v = report["verification"][kind]
        verdict = "OK" if not v["problems"] else "PROBLEMS: " + "; ".join(v["problems"])
        lines.append(
            f"  {kind:8} sent {v['requests_sent']}; spend.requests {v['spend_requests']}, "
            f"cache_hits {v['spend_cache_hits']}; requests rows {v['request_rows']} by cache "
            f"{v['request_rows_by_cache']}, by output tokens "
            f"{v['request_rows_by_output_tokens']}; cache rows {v['cache_rows']} — {verdict}"
        )
    lines.append(
        "  as each proxy logged its requests, ms: upstream attempt p50/p99/max; the rest of the "
        "request in the engine p50/p99/max (how many over 50 ms)"
    )
    for kind in PROXIES:
        v = report["verification"][kind]
        u, e = v["upstream_attempt_ms"], v["engine_ms_outside_upstream"]
        lines.append(
            f"  {kind:8} {u['p50']:.2f}/{u['p99']:.2f}/{u['max']:.1f}; "
            f"{e['p50']:.2f}/{e['p99']:.2f}/{e['max']:.1f} "
            f"({v['engine_ms_outside_upstream_over_50']})"
        )
    lines.append(f"load average before/after: {meta['loadavg_before']} / {meta['loadavg_after']}")
    return "\n".join(lines)


# -- profile -----------------------------------------------------------------------------------

_Key = tuple[str, int, str]


def _label(key: _Key, code_root: Path) -> str:
    filename, line, name = key
    if filename == "~":
        return name
    if filename.startswith(str(code_root)):
        filename = str(Path(filename).relative_to(code_root))
    elif "site-packages/" in filename:
        filename = filename.split("site-packages/", 1)[1]
    else:
        filename = filename.rsplit("/lib/python", 1)[-1]
    return f"{filename}:{line}({name})"


def profile_figures(path: Path, requests: int, code_root: Path) -> dict[str, Any]:
    """Own and cumulative time per function and own time per component, µs per request."""
    stats: dict[_Key, tuple[int, int, float, float, Any]] = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    per = 1e6 / max(1, requests)
    own: dict[str, float] = defaultdict(float)
    cum: dict[str, float] = defaultdict(float)
    calls: dict[str, float] = defaultdict(float)
    components: dict[str, float] = defaultdict(float)
    for key, (_, nc, tt, ct, _) in stats.items():
        label = _label(key, code_root)
        own[label] += tt * per
        cum[label] += ct * per
        calls[label] += nc / max(1, requests)
        components[component(key[0], code_root)] += tt * per
    return {
        "requests": requests,
        "total_us": sum(own.values()),
        "own": dict(own),
        "cum": dict(cum),
        "calls": dict(calls),
        "components": dict(components),
    }


STEPS: tuple[tuple[str, str, str], ...] = (
    ("engine/http.py", "endpoint", "whole request (HTTP endpoint)"),
    ("engine/control.py", "complete", "  upstream call (same work in both)"),
    ("engine/quotas.py", "admit", "  quota check (rpm, tpm)"),
    ("engine/pipeline.py", "_apply_caps", "  caps: output clamp + input cap"),
    ("engine/tokens.py", "count_request", "    tiktoken count of the request"),
    ("engine/pipeline.py", "_cache_decision", "  cache decision + key"),
    ("engine/pipeline.py", "_lookup", "  cache lookup (a miss)"),
    ("engine/pipeline.py", "_reserve", "  budget reservation"),
    ("engine/pipeline.py", "_settle", "  settle: budget, ledger, cache store"),
    ("engine/budgets.py", "record", "    spend ledger write (both)"),
    ("engine/cache.py", "put", "    cache store"),
    ("engine/pipeline.py", "_log", "  request log (both)"),
    ("engine/routing.py", "route", "  routing (same work in both)"),
    ("state/store.py", "query", "  SQLite reads (within the cache lookup and store)"),
    ("state/store.py", "_write_loop", "SQLite writer task (its own task: commits)"),
)
"""Functions whose cumulative time the profile compares: (file, function, what it is)."""


def _step(figures: dict[str, Any], path: str, name: str) -> tuple[float, float]:
    """Cumulative µs and calls per request of function ``name`` in ``path`` (any line)."""
    cum = calls = 0.0
    for label, value in figures["cum"].items():
        if label.startswith(path + ":") and label.endswith(f"({name})"):
            cum += value
            calls += figures["calls"][label]
    return cum, calls


def profile_diff(none: dict[str, Any], controls: dict[str, Any], top: int = 20) -> dict[str, Any]:
    """Where the controls proxy's extra main-thread time goes, per request."""

    def diff(key: str) -> list[dict[str, Any]]:
        names = set(none[key]) | set(controls[key])
        rows = [
            {
                "what": name,
                "controls_us": controls[key].get(name, 0.0),
                "none_us": none[key].get(name, 0.0),
                "extra_us": controls[key].get(name, 0.0) - none[key].get(name, 0.0),
                "calls_controls": controls["calls"].get(name, 0.0),
                "calls_none": none["calls"].get(name, 0.0),
            }
            for name in names
        ]
        return sorted(rows, key=lambda r: r["extra_us"], reverse=True)[:top]

    comps = set(none["components"]) | set(controls["components"])
    steps = []
    for path, name, what in STEPS:
        (c_us, c_calls), (n_us, n_calls) = _step(controls, path, name), _step(none, path, name)
        steps.append(
            {
                "what": what.strip(),
                "indent": len(what) - len(what.lstrip()),
                "function": f"{path}({name})",
                "controls_us": c_us,
                "none_us": n_us,
                "calls_controls": c_calls,
                "calls_none": n_calls,
            }
        )
    return {
        "total_extra_us": controls["total_us"] - none["total_us"],
        "steps": steps,
        "components": sorted(
            (
                {
                    "what": c,
                    "controls_us": controls["components"].get(c, 0.0),
                    "none_us": none["components"].get(c, 0.0),
                    "extra_us": controls["components"].get(c, 0.0) - none["components"].get(c, 0.0),
                }
                for c in comps
            ),
            key=lambda r: r["extra_us"],
            reverse=True,
        ),
        "own": diff("own"),
        "cum": diff("cum"),
    }


def _wait_for(path: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise ServiceError(f"the profiled proxy wrote no {path.name} within {timeout_s} s")
        time.sleep(0.05)


async def profile_run(
    bench: Bench, dumps: dict[str, Path], rate: float, seconds: float, code_root: Path
) -> dict[str, Any]:
    """Per proxy: an unprofiled window (CPU per request), then a profiled one; non-streaming."""
    out: dict[str, Any] = {}
    n_warm = max(1, round(rate * 2.0))
    n = max(1, round(rate * seconds))
    for kind in PROXIES:
        await bench.window("plain", kind, rate, bench.seeds(n_warm), phase="warmup")
    for kind in PROXIES:
        proxy = bench.procs.proxies[kind]
        plain = await bench.window("plain", kind, rate, bench.seeds(n), phase="unprofiled")
        threads0 = proxy.thread_cpu_seconds()
        bench.activate(kind)
        proxy.signal(signal.SIGUSR1)
        await asyncio.sleep(0.2)
        profiled = await bench.window("plain", kind, rate, bench.seeds(n), phase="profiled")
        proxy.signal(signal.SIGUSR2)
        await asyncio.to_thread(_wait_for, dumps[kind] / "1.prof")
        threads1 = proxy.thread_cpu_seconds()
        figures = profile_figures(dumps[kind] / "1.prof", profiled.result.ok, code_root)
        figures.update(
            {
                "cpu_ms_per_request_unprofiled": 1000 * plain.proxy_cpu_s / max(1, plain.answered),
                "cpu_ms_per_request_profiled": 1000
                * profiled.proxy_cpu_s
                / max(1, profiled.answered),
                "thread_cpu_ms_per_request_profiled": {
                    ("main" if name.endswith(f"/{proxy.pid}") else name): 1000
                    * (threads1[name] - threads0.get(name, 0.0))
                    / max(1, profiled.answered)
                    for name in threads1
                },
                "latency_ms_unprofiled": summarize(plain.result.latency_ms),
            }
        )
        out[kind] = figures
    out["diff"] = profile_diff(out["none"], out["controls"])
    return out


def render_profile(p: dict[str, Any], rate: float) -> str:
    lines = [f"non-streaming at {rate:.0f}/s, main (event-loop) thread, µs per request"]
    for kind in PROXIES:
        f = p[kind]
        threads = ", ".join(
            f"{k} {v:.3f}" for k, v in sorted(f["thread_cpu_ms_per_request_profiled"].items()) if v
        )
        lines.append(
            f"  {kind:8} CPU {f['cpu_ms_per_request_unprofiled']:.2f} ms/req unprofiled, "
            f"{f['cpu_ms_per_request_profiled']:.2f} profiled (threads, ms: {threads}); "
            f"profiled own time {f['total_us']:.0f} µs"
        )
    d = p["diff"]
    lines.append(f"  extra own time with the controls: {d['total_extra_us']:.0f} µs/request")
    lines.append("  steps, cumulative µs/request (controls, none; calls/req controls/none):")
    lines += [
        f"    {r['controls_us']:8.1f} {r['none_us']:8.1f} "
        f"{r['calls_controls']:5.1f}/{r['calls_none']:<5.1f} {' ' * r['indent']}{r['what']}"
        for r in d["steps"]
    ]
    lines.append("  by component (extra, controls, none):")
    lines += [
        f"    {r['extra_us']:8.1f} {r['controls_us']:8.1f} {r['none_us']:8.1f}  {r['what']}"
        for r in d["components"][:12]
    ]
    for key, title in (("cum", "cumulative"), ("own", "own")):
        lines.append(f"  top extra {title} time (extra, controls, none; calls/req controls/none):")
        lines += [
            f"    {r['extra_us']:8.1f} {r['controls_us']:8.1f} {r['none_us']:8.1f} "
            f"{r['calls_controls']:5.1f}/{r['calls_none']:<5.1f} {r['what']}"
            for r in d[key]
        ]
    return "\n".join(lines)


# -- main --------------------------------------------------------------------------------------


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _versions() -> dict[str, str]:
    out = {}
    for name in ("uvloop", "uvicorn", "starlette", "httpx", "httpcore", "aiosqlite", "tiktoken"):
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/controls_overhead.py",
        description="Measure what routedeck's cost controls add per request: latency, CPU and "
        "memory of the proxy with every control on, with none, and the upstream called directly.",
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run (< 1 minute)")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of the run: cProfile both proxies' event loops at --rate, non-streaming",
    )
    parser.add_argument("--rate", type=float, default=50.0, help="--profile's rate (req/s)")
    parser.add_argument("--seconds", type=float, default=6.0, help="--profile's window (s)")
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin the processes to separate cores"
    )
    parser.add_argument(
        "--no-pause",
        action="store_true",
        help="keep every proxy running during the other targets' windows",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON result")
    parser.add_argument(
        "--ref",
        help="measure this git commit (exported with git archive) instead of the working tree",
    )
    args = parser.parse_args(argv)
    if not 0 < args.rate <= 1000 or not 0 < args.seconds <= 60:
        parser.error("--rate must be in (0, 1000] and --seconds in (0, 60]")
    plan = QUICK if args.quick else FULL

    cpus = sorted(os.sched_getaffinity(0))
    cores: tuple[int, int] | None = None
    if args.no_pin or len(cpus) < 2:
        proxy_cpus = sim_cpus = None
        pinning = "not pinned"
    else:
        cores = (cpus[0], cpus[1])
        proxy_cpus, sim_cpus = {cpus[0]}, {cpus[1]}
        os.sched_setaffinity(0, sim_cpus)  # this process: the load generator
        pinning = f"proxies pinned to CPU {cpus[0]}, simulator + load generator to CPU {cpus[1]}"
    pausing = "not paused" if args.no_pause else "idle proxies stopped during other windows"

    started = dt.datetime.now(dt.UTC)
    meta: dict[str, Any] = {
        "command": " ".join(
            [".venv/bin/python", "bench/controls_overhead.py", *(argv or sys.argv[1:])]
        ),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "versions": _versions(),
        "pinning": pinning,
        "pausing": pausing,
        "loadavg_before": _loadavg(),
        "plan": asdict(plan),
        "sim_profile": SIM_PROFILE,
        "answer_tokens": ANSWER_TOKENS,
        "max_tokens_asked": MAX_TOKENS,
    }
    try:
        import uvloop

        loop_run: Any = uvloop.run
        meta["loadgen_loop"] = "uvloop"
    except ImportError:
        loop_run = asyncio.run
        meta["loadgen_loop"] = "asyncio"

    print(f"controls overhead: {pinning}; {pausing}", file=sys.stderr)
    report: dict[str, Any] = {"meta": meta}
    with tempfile.TemporaryDirectory(prefix="routedeck-controls-") as tmp:
        workdir = Path(tmp)
        dumps = {kind: workdir / f"prof-{kind}" for kind in PROXIES}
        head: Callable[[str], list[str]] | None = None
        if args.profile:
            for path in dumps.values():
                path.mkdir()
            head = lambda kind: [sys.executable, str(HELPER), str(dumps[kind])]  # noqa: E731
        try:
            code_root, meta["code"] = prepare_code(args.ref, workdir)
            with start_processes(
                workdir,
                code_root=code_root,
                sim_cpus=sim_cpus,
                proxy_cpus=proxy_cpus,
                proxy_head=head,
            ) as procs:
                meta["configs"] = procs.configs
                meta["affinity"] = {name: p.affinity() for name, p in procs.proxies.items()}
                meta["affinity"]["sim"] = procs.sim.affinity()
                bench = Bench(procs, plan, cores=cores, pause=not args.no_pause)
                bench.check()
                report["check"] = bench.check_info
                if args.profile:
                    report["profile"] = loop_run(
                        profile_run(bench, dumps, args.rate, args.seconds, code_root)
                    )
                else:
                    loop_run(bench.run())
            # The proxies have stopped: their stores have committed everything.
            report["verification"] = {
                kind: verify_state(kind, procs.state_files[kind], bench.sent[kind])
                for kind in PROXIES
            }
        except ServiceError as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
    meta["loadavg_after"] = _loadavg()
    meta["duration_s"] = round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1)
    report["windows"] = [w.to_json() for w in bench.windows]
    if args.profile:
        path = write_results(args.out, "controls-profile", started, report)
        text = render_profile(report["profile"], args.rate)
    else:
        report["grid"] = {mode: bench.rows(mode) for mode in MODES}
        report["memory"] = bench.memory
        path = write_results(args.out, "controls-overhead", started, report, quick=args.quick)
        text = render(report)
    print(text)
    problems = [p for kind in PROXIES for p in report["verification"][kind]["problems"]]
    print(f"\nfull figures: {path} ({meta['duration_s']:.0f} s run)")
    if problems:
        print("state check FAILED: " + "; ".join(problems), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
