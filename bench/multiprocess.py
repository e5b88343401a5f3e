"""Several ``routedeck serve`` processes on one port and one state file: what a second process
adds in throughput and CPU, and whether the processes agree on a drain.

    .venv/bin/python bench/multiprocess.py              # both layouts, N = 1 and 2, ~3 minutes
    .venv/bin/python bench/multiprocess.py --ref HEAD   # measure a commit, not the working tree
    .venv/bin/python bench/multiprocess.py --layouts none --window-s 2

For each CPU layout (`LAYOUTS`), in one run:

1. starts the simulated upstream (``python -m providers.sim``, profile `SIM_PROFILE`: 20 ms
   answers, no jitter) and, for each N in ``--processes`` (default 1 and 2), a *set* of N
   ``python -m console.cli serve`` processes sharing one config (`multi_config`): ``[server]
   reuse_port = true`` on a free port written into the config, one ``[state] path``, two
   providers on the simulator (``up`` and ``alt``) and tier ``low`` = ``up-model`` then
   ``alt-model``. Each set has its own port and state file; a set's processes start one after
   the other, each once the one before listens (`bench.services`). All sets run at once: an
   idle set costs under 1% of a core per process (measured, ``idle_cpu_pct_each``);
2. measures every proxy's CPU with no traffic for 4 s, picks the prompt whose answer is 64
   tokens through each set (as ``run.py`` does), warms each set up, then climbs `GRID` with
   open-loop non-streaming windows (`bench.loadgen`; the kernel spreads its keep-alive
   connections over a set's processes), **alternating the sets** at each rate, the order
   rotating from rate to rate, so that drift in the machine's speed lands on N = 1 and N = 2
   alike. A failing rate is run once more (one failure on a shared machine can be someone
   else's load); a set stops climbing when that fails too. A window is *sustained* by
   ``run.py``'s criteria: under 1% errors, p99 from the due time at most 100 ms, achieved at
   least 95% of the offered rate;
3. CPU per request = the CPU of the N proxy processes (``/proc``, all threads) over the window,
   summed, over the responses they sent;
4. checks each set's consistency through its shared port: drains provider ``up`` with ``POST
   /admin/commands`` (whichever process accepts the connection applies it), then polls ``GET
   /admin/snapshot`` on a new connection every 10 ms, telling the processes apart by their
   ``started_at``, until every process shows ``up`` drained; 1 s after the command it sends 50
   requests, each on a new connection, and attributes each to the process whose snapshot lists
   its request id among the recent requests. It passes when every process showed the drain
   within 1 s, every request was answered 200 by ``alt``, and (N > 1) every process answered
   some of them.

The layouts: ``none`` pins nothing; ``split`` pins proxy *i* to CPU *i* and the simulator and
the load generator (this process) to the last CPU. On two CPUs the simulator and the load
generator need a third of a core or more at these rates, so a second proxy process can only
gain what the machine has left: the figures are bounded by the machine, not by routedeck.

It prints a table and writes every figure to ``bench/results/multiprocess-<UTC time>.json``.
Everything listens on and connects to 127.0.0.1. Exit status: 0 when the run completed
(whatever the figures), 1 when a process failed to start or died, 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import math
import os
import platform
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson

if not __package__:  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import RequestSpec, WindowResult, percentile, run_window, summarize
from bench.run import (
    MAX_ERROR_RATIO,
    MAX_TOKENS,
    MIN_ACHIEVED,
    P99_BOUND_MS,
    RESULTS,
    prepare_code,
)
from bench.services import (
    CLK_TCK,
    SIM_PROFILE,
    Service,
    ServiceError,
    cpu_busy_seconds,
    launch,
    self_cpu_seconds,
    settle,
    write_results,
)

GRID = (500, 800, 1000, 1200, 1400, 1600, 1800, 2000, 2200, 2400, 2800, 3200)
"""Offered rates, req/s, climbed in order until one fails twice."""
WARMUP = (300.0, 1.5)
"""Rate and seconds of the unrecorded warm-up of each set of processes."""
DRAIN_TARGET = "up"
"""The provider the consistency check drains; tier ``low`` falls back to ``alt``."""
CHECK_REQUESTS = 50
CHECK_AFTER_S = 1.0
"""The consistency check's requests start this long after the drain command was sent."""
POLL_S = 3.0
"""The longest the consistency check polls snapshots for the drain to show everywhere."""
SETTLE_MAX_S = 5.0
IDLE_S = 4.0
"""How long each set's idle CPU is measured, before any request."""
_JSON = {"content-type": "application/json"}


@dataclass(frozen=True, slots=True)
class Layout:
    """Where each process may run, for N proxy processes on the machine's CPUs."""

    name: str
    description: str

    def cpus(self, cpus: Sequence[int], n: int) -> tuple[list[set[int] | None], set[int] | None]:
        """(each proxy's CPUs, the simulator's and the load generator's CPUs); None: any."""
        if self.name == "none" or len(cpus) < 2:
            return [None] * n, None
        # One proxy per CPU, the last CPU shared with the simulator and the load generator:
        # for N = 1 on two CPUs this is run.py's layout.
        return [{cpus[i % len(cpus)]} for i in range(n)], {cpus[-1]}


LAYOUTS = {
    "none": Layout(
        "none",
        "nothing pinned: the scheduler spreads the proxies, the simulator and the load "
        "generator over every CPU",
    ),
    "split": Layout(
        "split",
        "proxy i on CPU i; the simulator and the load generator on the last CPU (for N = 1, "
        "run.py's layout: proxy on CPU 0, simulator and load generator on CPU 1)",
    ),
}


def multi_config(sim_port: int, port: int, state_path: Path) -> str:
    """The config every process of one set shares: run.py's (one OpenAI provider on the
    simulator, tier ``low``), plus ``reuse_port`` on a fixed port and a second provider on the
    same simulator for the tier to fall back to when the first is drained."""
    return f"""\
[server]
port = {port}
reuse_port = true

[state]
path = "{state_path}"

[providers.up]
protocol = "openai"
base_url = "http://127.0.0.1:{sim_port}/v1"

[providers.alt]
protocol = "openai"
base_url = "http://127.0.0.1:{sim_port}/v1"

[deployments.up-model]
provider = "up"
model = "bench-model"
price = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}

[deployments.alt-model]
provider = "alt"
model = "bench-model"
price = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}

[tiers.low]
deployments = ["up-model", "alt-model"]
"""


def _body(prompt: str) -> bytes:
    return orjson.dumps(
        {
            "model": "low",
            "messages": [{"role": "user", "content": prompt}],
            "max_tokens": MAX_TOKENS,
        }
    )


def free_port() -> int:
    """A port free on 127.0.0.1 now (the kernel's choice), to write into the config."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sustained(r: WindowResult) -> bool:
    """``run.py``'s criteria for one window."""
    if not r.latency_ms or r.errors > MAX_ERROR_RATIO * r.planned:
        return False
    if percentile(sorted(r.latency_ms), 99) > P99_BOUND_MS:
        return False
    return r.achieved_rps >= MIN_ACHIEVED * r.rate


@dataclass(frozen=True, slots=True)
class _Marks:
    """Cumulative counters at one instant, seconds."""

    wall: float
    proxies: dict[str, float]
    """Every proxy of every set, by name."""
    sim: float
    loadgen: float
    busy: dict[str, float]
    kernel: tuple[float, float, float]
    """Machine-wide irq, softirq and steal seconds: busy time charged to no process."""


class ProcessSet:
    """N proxies sharing a port and a state file; what was measured through them."""

    def __init__(self, proxies: list[Service], port: int) -> None:
        self.proxies = proxies
        self.port = port
        self.spec: RequestSpec | None = None
        self.calibration: dict[str, Any] = {}
        self.windows: list[dict[str, Any]] = []
        self.best = 0.0
        """The highest rate of the grid it sustained so far, req/s."""
        self.first_fail: float | None = None
        """The rate at which it failed twice; its climb ends there."""
        self.idle_cpu_pct: list[float] = []

    @property
    def name(self) -> str:
        return f"N={len(self.proxies)}"

    async def calibrate(self) -> None:
        """Pick the prompt whose answer through the proxies is ``MAX_TOKENS`` tokens long."""
        url = f"http://127.0.0.1:{self.port}/v1/chat/completions"
        async with httpx.AsyncClient(timeout=30.0) as http:
            for tries in range(1, 65):
                prompt = f"Benchmark prompt {tries}: describe the weather."
                reply = await http.post(url, content=_body(prompt), headers=_JSON)
                reply.raise_for_status()
                tokens = reply.json()["usage"]["completion_tokens"]
                if tokens == MAX_TOKENS:
                    self.calibration = {
                        "prompt": prompt,
                        "tries": tries,
                        "deployment": reply.headers.get("x-routedeck-deployment"),
                        "plain_bytes": len(reply.content),
                    }
                    self.spec = RequestSpec(
                        "127.0.0.1", self.port, "/v1/chat/completions", _body(prompt)
                    )
                    return
        raise ServiceError(f"no prompt among 64 got a {MAX_TOKENS}-token answer")

    async def consistency(self) -> dict[str, Any]:
        """Drain `DRAIN_TARGET` through the shared port and check that every process follows."""
        n = len(self.proxies)
        assert self.spec is not None
        # A new connection per request, so the kernel picks a process for each.
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{self.port}",
            timeout=10.0,
            limits=httpx.Limits(max_keepalive_connections=0),
            headers={"connection": "close"},
        ) as http:

            async def snapshot() -> dict[str, Any]:
                reply = await http.get("/admin/snapshot")
                reply.raise_for_status()
                data: dict[str, Any] = reply.json()
                return data

            async def every_process() -> dict[float, dict[str, Any]]:
                seen: dict[float, dict[str, Any]] = {}
                deadline = time.monotonic() + 10.0
                while len(seen) < n and time.monotonic() < deadline:
                    s = await snapshot()
                    seen[s["started_at"]] = s
                return seen

            before = await every_process()
            if len(before) < n:
                return {"passed": False, "why": f"only {len(before)} of {n} processes answered"}
            # Processes were started in order, so started_at order is proxy-0, proxy-1, ...
            names = {at: self.proxies[i].name for i, at in enumerate(sorted(before))}
            t0 = time.perf_counter()
            reply = await http.post(
                "/admin/commands",
                json={
                    "command": "drain",
                    "target": DRAIN_TARGET,
                    "actor": "bench/multiprocess",
                    "reason": "consistency check",
                },
            )
            ack_ms = 1000.0 * (time.perf_counter() - t0)
            applied = reply.status_code == 200 and bool(reply.json().get("ok"))
            # Per process: the last poll sent before it showed the drain, and the first answer
            # that showed it; it applied the drain somewhere in between.
            delay: dict[str, dict[str, Any]] = {
                name: {"last_without_ms": None, "first_with_ms": None, "polls": 0}
                for name in names.values()
            }
            while time.perf_counter() - t0 < POLL_S:
                sent = 1000.0 * (time.perf_counter() - t0)
                s = await snapshot()
                got = 1000.0 * (time.perf_counter() - t0)
                if s["started_at"] not in names:
                    continue  # not one of ours: cannot happen on a port only they hold
                d = delay[names[s["started_at"]]]
                d["polls"] += 1
                if DRAIN_TARGET in s["drained"]:
                    if d["first_with_ms"] is None:
                        d["first_with_ms"] = got
                else:
                    d["last_without_ms"] = sent
                if all(x["first_with_ms"] is not None for x in delay.values()):
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(max(0.0, t0 + CHECK_AFTER_S - time.perf_counter()))
            started_ms = 1000.0 * (time.perf_counter() - t0)
            answers = []
            for _ in range(CHECK_REQUESTS):
                r = await http.post("/v1/chat/completions", content=self.spec.body, headers=_JSON)
                answers.append(
                    {
                        "status": r.status_code,
                        "request_id": r.headers.get("x-routedeck-request-id"),
                        "provider": r.headers.get("x-routedeck-provider"),
                        "deployment": r.headers.get("x-routedeck-deployment"),
                    }
                )
            ended_ms = 1000.0 * (time.perf_counter() - t0)
            await asyncio.sleep(0.6)  # two snapshot intervals: the last requests are published
            after = await every_process()
        recent = {names[at]: {v["request_id"] for v in s["recent"]} for at, s in after.items()}
        per_process = {name: {"answered": 0, "on_drained": 0} for name in names.values()}
        unattributed = 0
        for answer in answers:
            owner = next((k for k, ids in recent.items() if answer["request_id"] in ids), None)
            answer["process"] = owner
            if owner is None:
                unattributed += 1
                continue
            per_process[owner]["answered"] += 1
            per_process[owner]["on_drained"] += answer["provider"] == DRAIN_TARGET
        within = all(
            d["first_with_ms"] is not None and d["first_with_ms"] <= 1000.0 * CHECK_AFTER_S
            for d in delay.values()
        )
        clean = all(a["status"] == 200 and a["provider"] != DRAIN_TARGET for a in answers)
        spread = n == 1 or all(p["answered"] > 0 for p in per_process.values())
        return {
            "passed": applied and within and clean and spread,
            "command_applied": applied,
            "command_ms": ack_ms,
            "drain_seen": delay,
            "requests_from_ms": started_ms,
            "requests_until_ms": ended_ms,
            "requests": len(answers),
            "ok_200": sum(a["status"] == 200 for a in answers),
            "on_drained_provider": sum(a["provider"] == DRAIN_TARGET for a in answers),
            "deployments": sorted({str(a["deployment"]) for a in answers}),
            "per_process": per_process,
            "unattributed": unattributed,
            "answers": answers,
        }


class Rig:
    """The simulator and the process sets of one layout, measured in alternation: at each rate
    of the grid every set still climbing runs a window, the order rotating from rate to rate,
    so that drift in the machine's speed lands on every set alike."""

    def __init__(self, sim: Service, sets: list[ProcessSet], window_s: float) -> None:
        self.sim = sim
        self.sets = sets
        self.window_s = window_s

    @property
    def proxies(self) -> list[Service]:
        return [p for s in self.sets for p in s.proxies]

    @property
    def servers(self) -> list[Service]:
        return [self.sim, *self.proxies]

    def check_alive(self) -> None:
        """Raise `ServiceError` with the log's tail if a process has died."""
        dead = [s for s in self.servers if not s.alive()]
        if dead:
            raise ServiceError(
                "a benchmarked process died:\n"
                + "\n".join(f"{s.name}:\n{s.log_tail()}" for s in dead)
            )

    async def settle(self) -> float:
        """Wait (0.1 s to `SETTLE_MAX_S`) until the servers are quiet: at most about one clock
        tick of CPU per process over 0.1 s (two for the simulator and the first proxy, as
        ``run.py``). Returns the seconds waited."""
        quiet = 0.011 + 0.01 * (len(self.servers) - 2)
        return await settle(self.servers, maximum_s=SETTLE_MAX_S, quiet_s=quiet)

    def _marks(self) -> _Marks:
        return _Marks(
            wall=time.perf_counter(),
            proxies={p.name: p.cpu_seconds() for p in self.proxies},
            sim=self.sim.cpu_seconds(),
            loadgen=self_cpu_seconds(),
            busy=cpu_busy_seconds(),
            kernel=_kernel_seconds(),
        )

    async def idle_cpu(self, seconds: float) -> None:
        """Each proxy's CPU with no traffic, % of a core (its state sync, snapshot publisher,
        lease renewal and store writer), into `ProcessSet.idle_cpu_pct`."""
        before = {p.name: p.cpu_seconds() for p in self.proxies}
        t0 = time.perf_counter()
        await asyncio.sleep(seconds)
        wall = time.perf_counter() - t0
        for s in self.sets:
            s.idle_cpu_pct = [100.0 * (p.cpu_seconds() - before[p.name]) / wall for p in s.proxies]

    async def window(
        self, pset: ProcessSet, rate: float, phase: str, seconds: float
    ) -> dict[str, Any]:
        """Settle, run one window through ``pset``, and record it (unless it is a warm-up)."""
        assert pset.spec is not None
        settle_s = await self.settle()
        self.check_alive()
        marks: list[_Marks] = []
        r = await run_window(
            pset.spec,
            rate=rate,
            duration_s=seconds,
            on_start=lambda: marks.append(self._marks()),
            on_stop=lambda: marks.append(self._marks()),
        )
        a, b = marks
        wall = b.wall - a.wall
        cpu = {name: b.proxies[name] - a.proxies[name] for name in a.proxies}
        mine = [cpu[p.name] for p in pset.proxies]
        idle_sets = sum(cpu.values()) - sum(mine)
        sim_cpu, loadgen_cpu = b.sim - a.sim, b.loadgen - a.loadgen
        busy = {name: b.busy[name] - a.busy[name] for name in b.busy}
        irq, softirq, steal = (y - x for x, y in zip(a.kernel, b.kernel, strict=True))
        ours = sum(cpu.values()) + sim_cpu + loadgen_cpu
        lost = sum(v for k, v in r.error_kinds.items() if not k.startswith(("http_", "incomplete")))
        answered = r.planned - lost
        nan = math.nan
        w = {
            "rate": rate,
            "phase": phase,
            "planned": r.planned,
            "ok": r.ok,
            "errors": r.errors,
            "error_kinds": r.error_kinds,
            "error_pct": 100.0 * r.error_ratio,
            "achieved_rps": r.achieved_rps,
            "latency_ms": summarize(r.latency_ms),
            "send_lag_p99_ms": percentile(sorted(r.send_lag_ms), 99),
            "connections": r.connections,
            "connections_opened_late": r.connections_opened_late,
            "max_in_flight": r.max_in_flight,
            "wall_s": wall,
            "settle_s": settle_s,
            "proxy_cpu_s": mine,
            "proxy_cpu_ms_per_request": 1000.0 * sum(mine) / answered if answered else nan,
            "proxy_cpu_pct_each": [100.0 * c / wall for c in mine],
            "idle_sets_cpu_pct": 100.0 * idle_sets / wall,
            "sim_cpu_ms_per_request": 1000.0 * sim_cpu / answered if answered else nan,
            "loadgen_cpu_ms_per_request": 1000.0 * loadgen_cpu / answered if answered else nan,
            "busy_pct_per_cpu": {name: 100.0 * s / wall for name, s in sorted(busy.items())},
            "irq_softirq_pct": 100.0 * (irq + softirq) / wall,
            "steal_pct": 100.0 * steal / wall,
            "other_load_pct": 100.0
            * max(0.0, sum(busy.values()) - ours - irq - softirq - steal)
            / wall,
            "sustained": sustained(r),
        }
        if phase != "warmup":
            pset.windows.append(w)
        _progress(pset.name, w)
        return w

    async def run(self, grid: Sequence[float]) -> dict[str, dict[str, Any]]:
        """Measure idle CPU, calibrate and warm up every set, climb ``grid`` with every set in
        alternation (a failing rate is run once more; a set stops climbing when that fails
        too), then check each set's consistency. Returns the checks by set name."""
        await self.settle()
        await self.idle_cpu(IDLE_S)
        for pset in self.sets:
            await pset.calibrate()
            await self.window(pset, WARMUP[0], "warmup", WARMUP[1])
        for step, rate in enumerate(grid):
            k = step % len(self.sets)
            climbing = [s for s in self.sets[k:] + self.sets[:k] if s.first_fail is None]
            if not climbing:
                break
            for pset in climbing:
                ok = (await self.window(pset, rate, "grid", self.window_s))["sustained"]
                if not ok:
                    ok = (await self.window(pset, rate, "retry", self.window_s))["sustained"]
                if ok:
                    pset.best = rate
                else:
                    pset.first_fail = rate
        return {pset.name: await pset.consistency() for pset in self.sets}


def _kernel_seconds() -> tuple[float, float, float]:
    """(irq, softirq, steal) seconds since boot over every CPU, from ``/proc/stat``: loopback
    networking runs partly in softirq, and on a VM steal is time the hypervisor took."""
    with open("/proc/stat") as f:
        fields = f.readline().split()  # "cpu  user nice system idle iowait irq softirq steal"
    irq, softirq, steal = (int(x) / CLK_TCK for x in fields[6:9])
    return irq, softirq, steal


def _progress(name: str, w: dict[str, Any]) -> None:
    lat = w["latency_ms"]
    each = "+".join(f"{x:.0f}" for x in w["proxy_cpu_pct_each"])
    print(
        f"  {name} {w['phase']:6} {w['rate']:6.0f}/s  "
        f"{'sustained' if w['sustained'] else 'FAILED   '}  p50 {lat['p50']:7.1f}  "
        f"p99 {lat['p99']:8.1f} ms  errors {w['error_pct']:5.1f}%  "
        f"CPU {w['proxy_cpu_ms_per_request']:.2f} ms/req ({each}% of a core)  "
        f"other load {w['other_load_pct']:3.0f}%, softirq {w['irq_softirq_pct']:3.0f}%, "
        f"steal {w['steal_pct']:3.0f}%",
        file=sys.stderr,
        flush=True,
    )


def measure_layout(
    workdir: Path,
    code_root: Path,
    layout: Layout,
    cpus: list[int],
    counts: Sequence[int],
    grid: Sequence[float],
    window_s: float,
    loop_run: Callable[[Coroutine[Any, Any, Any]], Any],
) -> list[dict[str, Any]]:
    """Start the simulator and one set of N proxies per N in ``counts`` (each set its own port
    and state file), measure them in alternation (in ``loop_run``, the load generator's event
    loop), stop them. One result per set; raises `ServiceError` if a process fails or dies."""
    side_cpus = layout.cpus(cpus, 1)[1]
    os.sched_setaffinity(0, side_cpus or set(cpus))  # the load generator: this process
    workdir.mkdir(parents=True)
    python = sys.executable
    sim_argv = [python, "-m", "providers.sim", "--host", "127.0.0.1", "--port", "0"]
    sim = launch(
        "sim",
        [*sim_argv, "--seed", "0", "--profile", SIM_PROFILE],
        workdir,
        side_cpus,
        30.0,
        code_root,
    )
    sets: list[ProcessSet] = []
    try:
        for n in counts:
            port = free_port()
            config_path = workdir / f"n{n}.toml"
            config_path.write_text(multi_config(sim.port, port, workdir / f"n{n}.db"))
            proxy_cpus = layout.cpus(cpus, n)[0]
            proxies: list[Service] = []
            sets.append(ProcessSet(proxies, port))
            for i in range(n):
                proxies.append(
                    launch(
                        f"n{n}-proxy-{i}",
                        [python, "-m", "console.cli", "serve", "--config", str(config_path)],
                        workdir,
                        proxy_cpus[i],
                        30.0,
                        code_root,
                    )
                )
        rig = Rig(sim, sets, window_s)
        affinity = {s.name: sorted(set(s.affinity().values())) for s in rig.servers}
        affinity["loadgen"] = [",".join(map(str, sorted(os.sched_getaffinity(0))))]
        print(
            f"layout {layout.name}: "
            + ", ".join(f"{k} on CPU {'/'.join(v)}" for k, v in affinity.items()),
            file=sys.stderr,
            flush=True,
        )
        checks = loop_run(rig.run(grid))
        rig.check_alive()
        rss = {p.name: p.rss_kib() for p in rig.proxies}
    finally:
        for pset in sets:
            for proxy in pset.proxies:
                proxy.stop()
        sim.stop()
    return [
        {
            "layout": layout.name,
            "processes": len(pset.proxies),
            "port": pset.port,
            "affinity": {
                k: v
                for k, v in affinity.items()
                if k in ("sim", "loadgen") or k in {p.name for p in pset.proxies}
            },
            "calibration": pset.calibration,
            "max_sustained_rps": pset.best,
            "first_failing_rps": pset.first_fail,
            "idle_cpu_pct_each": pset.idle_cpu_pct,
            "consistency": checks[pset.name],
            "proxy_rss_kib_end": {p.name: rss[p.name] for p in pset.proxies},
            "windows": pset.windows,
        }
        for pset in sets
    ]


def _window_at(result: dict[str, Any], rate: float) -> dict[str, Any] | None:
    """The sustained window at ``rate`` (the retry when the first failed), if any."""
    found: dict[str, Any] | None = next(
        (w for w in result["windows"] if w["rate"] == rate and w["sustained"]), None
    )
    return found


def summarize_layout(results: list[dict[str, Any]]) -> dict[str, Any]:
    """N=1 against the largest N of one layout: sustained rates, CPU per request and ratios."""
    one = next(r for r in results if r["processes"] == 1)
    many = max(results, key=lambda r: r["processes"])
    common = min(one["max_sustained_rps"], many["max_sustained_rps"])
    w1, wn = _window_at(one, common), _window_at(many, common)
    b1 = _window_at(one, one["max_sustained_rps"])
    bn = _window_at(many, many["max_sustained_rps"])
    nan = math.nan
    return {
        "n": many["processes"],
        "sustained_rps": [one["max_sustained_rps"], many["max_sustained_rps"]],
        "rate_ratio": many["max_sustained_rps"] / one["max_sustained_rps"]
        if one["max_sustained_rps"]
        else nan,
        "common_rate": common,
        "cpu_ms_per_request_at_common_rate": [
            w1["proxy_cpu_ms_per_request"] if w1 else nan,
            wn["proxy_cpu_ms_per_request"] if wn else nan,
        ],
        "cpu_ms_per_request_at_own_best": [
            b1["proxy_cpu_ms_per_request"] if b1 else nan,
            bn["proxy_cpu_ms_per_request"] if bn else nan,
        ],
        "cpu_ratio_at_common_rate": wn["proxy_cpu_ms_per_request"] / w1["proxy_cpu_ms_per_request"]
        if w1 and wn
        else nan,
    }


def render(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        f"routedeck, several processes on one port and one state file — {meta['date']}, "
        f"{meta['nproc']} CPUs, load average before {meta['loadavg_before']}, "
        f"after {meta['loadavg_after']}",
        f"criteria: <{100 * MAX_ERROR_RATIO:.0f}% errors, p99 ≤ {P99_BOUND_MS:.0f} ms from the "
        f"due time, achieved ≥ {100 * MIN_ACHIEVED:.0f}%; {meta['window_s']:g} s windows, "
        "non-streaming, 64-token answers, upstream 20 ms",
        "",
    ]
    for layout in meta["layouts"]:
        lines.append(f"layout {layout}: {LAYOUTS[layout].description}; the sets' windows alternate")
        lines.append(
            "  N | rate/s | result          |  p50 ms |  p99 ms | err % | proxies CPU ms/req | "
            "% of a core per proxy | sim ms/req | other procs % | softirq % | steal %"
        )
        for res in report["results"]:
            if res["layout"] != layout:
                continue
            for w in res["windows"]:
                lat = w["latency_ms"]
                each = " + ".join(f"{x:3.0f}" for x in w["proxy_cpu_pct_each"])
                mark = "sustained" if w["sustained"] else "FAILED"
                if w["phase"] == "retry":
                    mark += " (2nd)"
                lines.append(
                    f"  {res['processes']} | {w['rate']:6.0f} | {mark:15} | {lat['p50']:7.1f} | "
                    f"{lat['p99']:7.1f} | {w['error_pct']:5.1f} | "
                    f"{w['proxy_cpu_ms_per_request']:18.2f} | {each:>21} | "
                    f"{w['sim_cpu_ms_per_request']:10.3f} | {w['other_load_pct']:13.0f} | "
                    f"{w['irq_softirq_pct']:9.0f} | {w['steal_pct']:7.0f}"
                )
            fail = res["first_failing_rps"]
            lines.append(
                f"  N={res['processes']}: highest sustained {res['max_sustained_rps']:.0f}/s"
                + (f" (fails at {fail:.0f})" if fail else " (not reached)")
                + f"; pinning {res['affinity']}; idle CPU "
                + " + ".join(f"{x:.1f}" for x in res["idle_cpu_pct_each"])
                + "% of a core"
            )
        s = report["summary"][layout]
        cpu = s["cpu_ms_per_request_at_common_rate"]
        lines.append(
            f"  N=1 → N={s['n']}: sustained {s['sustained_rps'][0]:.0f} → "
            f"{s['sustained_rps'][1]:.0f}/s ({s['rate_ratio']:.2f}x); CPU at "
            f"{s['common_rate']:.0f}/s {cpu[0]:.2f} → {cpu[1]:.2f} ms/req "
            f"({s['cpu_ratio_at_common_rate']:.2f}x)"
        )
        lines.append("")
    lines.append(
        f"consistency (drain {DRAIN_TARGET!r} through the shared port, "
        f"{CHECK_REQUESTS} requests from {CHECK_AFTER_S:g} s later):"
    )
    for res in report["results"]:
        c = res["consistency"]
        if "drain_seen" not in c:
            lines.append(f"  {res['layout']} N={res['processes']}: FAILED, {c.get('why')}")
            continue
        seen = ", ".join(
            f"{name} between {_ms(d['last_without_ms'])} and {_ms(d['first_with_ms'])} ms "
            f"({d['polls']} polls)"
            for name, d in c["drain_seen"].items()
        )
        served = ", ".join(
            f"{name} {p['answered']} ({p['on_drained']} on {DRAIN_TARGET})"
            for name, p in c["per_process"].items()
        )
        lines.append(
            f"  {res['layout']} N={res['processes']}: {'passed' if c['passed'] else 'FAILED'}; "
            f"command {c['command_ms']:.0f} ms; drain seen by {seen}; requests at "
            f"{c['requests_from_ms']:.0f}-{c['requests_until_ms']:.0f} ms: {c['ok_200']}/"
            f"{c['requests']} 200, {c['on_drained_provider']} on {DRAIN_TARGET!r}, deployments "
            f"{c['deployments']}; answered by {served}"
            + (f", {c['unattributed']} unattributed" if c["unattributed"] else "")
        )
    return "\n".join(lines)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/multiprocess.py",
        description="Throughput and CPU of 1 against N routedeck serve processes sharing a port "
        "(SO_REUSEPORT) and a state file, and a drain-consistency check across them.",
    )
    parser.add_argument(
        "--layouts",
        default="none,split",
        help=f"comma-separated CPU layouts, from {', '.join(LAYOUTS)} (default: both)",
    )
    parser.add_argument(
        "--processes", default="1,2", help="comma-separated N, 1 first (default: 1,2)"
    )
    parser.add_argument("--window-s", type=float, default=3.0, help="seconds per window")
    parser.add_argument(
        "--ref", help="measure this git commit (git archive) instead of the working tree"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON result")
    args = parser.parse_args(argv)
    layouts = [x.strip() for x in args.layouts.split(",") if x.strip()]
    if not layouts or any(x not in LAYOUTS for x in layouts):
        parser.error(f"--layouts takes names from {', '.join(LAYOUTS)}")
    try:
        counts = [int(x) for x in args.processes.split(",") if x.strip()]
    except ValueError:
        parser.error("--processes takes whole numbers")
    if not counts or counts[0] != 1 or any(c < 1 for c in counts):
        parser.error("--processes must start with 1")
    if args.window_s <= 0:
        parser.error("--window-s must be positive")

    try:
        import uvloop

        loop_run: Any = uvloop.run
    except ImportError:
        loop_run = asyncio.run

    started = dt.datetime.now(dt.UTC)
    meta: dict[str, Any] = {
        "command": " ".join([".venv/bin/python", "bench/multiprocess.py", *(argv or sys.argv[1:])]),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadgen_loop": "uvloop" if loop_run is not asyncio.run else "asyncio",
        "loadavg_before": _loadavg(),
        "layouts": layouts,
        "layout_descriptions": {x: LAYOUTS[x].description for x in layouts},
        "processes": counts,
        "grid": list(GRID),
        "window_s": args.window_s,
        "warmup": list(WARMUP),
        "criteria": {
            "max_error_ratio": MAX_ERROR_RATIO,
            "p99_bound_ms": P99_BOUND_MS,
            "min_achieved": MIN_ACHIEVED,
        },
        "sim_profile": SIM_PROFILE,
        "config": multi_config(0, 0, Path("<tmp>/state.db"))
        .replace("port = 0\n", "port = <free port>\n")
        .replace(":0/", ":<sim port>/"),
    }
    results: list[dict[str, Any]] = []
    original_affinity = os.sched_getaffinity(0)
    cpus = sorted(original_affinity)
    with tempfile.TemporaryDirectory(prefix="routedeck-multi-") as tmp:
        try:
            code_root, meta["code"] = prepare_code(args.ref, Path(tmp))
            for layout in layouts:
                results += measure_layout(
                    Path(tmp) / layout,
                    code_root,
                    LAYOUTS[layout],
                    cpus,
                    counts,
                    GRID,
                    args.window_s,
                    loop_run,
                )
        except (ServiceError, httpx.HTTPError) as exc:
            print(f"bench: {exc!r}", file=sys.stderr)
            return 1
        finally:
            os.sched_setaffinity(0, original_affinity)
    meta["loadavg_after"] = _loadavg()
    meta["duration_s"] = round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1)
    report = {
        "meta": meta,
        "summary": {
            layout: summarize_layout([r for r in results if r["layout"] == layout])
            for layout in layouts
        },
        "results": results,
    }
    path = write_results(args.out, "multiprocess", started, report)
    print(render(report))
    print(f"\nfull figures: {path} ({meta['duration_s']:.0f} s run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
