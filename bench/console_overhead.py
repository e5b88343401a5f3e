"""Does the console slow the engine? The proxy's added latency with and without the console.

    .venv/bin/python bench/console_overhead.py --ref HEAD   # the full run, about 3.2 minutes
    .venv/bin/python bench/console_overhead.py --quick      # a smoke check, about 40 seconds

One run starts the simulated upstream and ``routedeck serve`` (`bench.services`, the same
processes and config as `bench.run`), and ``routedeck console`` on the same config (with a
SQLite file of its own) inside a detached tmux session of 160x48 cells on a tmux server of its
own, so that Textual renders every pane for real at its default refresh (0.5 s). The console is
two processes: its UI (``console.cli console``), and the engine the UI starts as its child
(``console.cli ... serve ...``) and drives over the admin API, polling ``/admin/snapshot``. The
run gives the console an admin token of its own making (``$ROUTEDECK_ADMIN_TOKEN``, which the
console passes on to its engine), so that it can read the engine's snapshot too. The console's
proxy port is read from its header line. Then, for non-streaming and for streaming requests, it
alternates open-loop windows (`bench.loadgen`) on three targets at each rate: the simulator
directly ("direct"), the headless proxy ("serve") and the console's engine ("console"), rotating
the order every round.

When pinned, ``serve`` and the console's engine run on CPU 0 (the engine inherits it from the
console, which starts on CPU 0), and the console's UI is then moved, every thread of it, to
CPU 1 with the simulator, the load generator and the tmux server.

Only the target of a window runs: the other routedeck target is stopped before the window and
continued (SIGCONT) before its own, so that the console's idle work never lands on the headless
proxy's windows (``--no-pause`` keeps both running). ``serve`` is stopped with SIGSTOP. The
console is stopped UI first, then engine, and continued engine first: a UI left running would
poll a stopped engine, see its polls time out and show a broken link. Its UI gets SIGTSTP (what
Ctrl+Z sends), on which Textual leaves application mode and stops itself; its engine gets
SIGSTOP. A target is stopped only once it has gone quiet (its backlog done, at most
`DRAIN_MAX_S`), and before a routedeck target's window an open circuit breaker (read from
``/admin/snapshot``) is waited out: a trial run without these guards answered whole windows
with 503 after an overloaded one.

A target that fails more than 1% of a window's requests is saturated at that rate and is not
measured again at that rate or above in that mode.

Halfway through every window and when its last request is due, whatever the target (so the
cost of the two tmux clients lands on all targets alike), it captures the console's screen: the
two are further apart than the console's update cycle (about 1 s with its own engine, see
`CAPTURE_AT`). The console counts as rendering when every console window it kept up with
shows a non-zero requests/s in the header and a screen that changed between the two captures,
and the header showed several rates over the run.

CPU per request and memory of "console" are those of the console's engine, comparable with
``serve``; the UI's own CPU (% of a core) and memory are reported apart, idle and under load.

It prints the tables and writes every figure to
``bench/results/console-overhead-<UTC time>.json``. bench/README.md explains the method.
Exit status: 0 when the run completed (whatever the figures), 1 when a process failed to start
or died, or the console was not seen rendering; 2 on bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import hashlib
import importlib.metadata
import math
import os
import platform
import re
import secrets
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import httpx

if not __package__:  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import RequestSpec, WindowResult, percentile, run_window, summarize
from bench.run import QUICK as RUN_PLAN
from bench.run import Bench, prepare_code
from bench.services import (
    CLK_TCK,
    SIM_PROFILE,
    ServiceError,
    Services,
    cpu_busy_seconds,
    proxy_config,
    self_cpu_seconds,
    settle,
    write_results,
)

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = ("direct", "serve", "console")
ENGINES = ("serve", "console")
"""The targets that are a routedeck engine: ``serve``, and the console's engine (its child)."""
UI = "ui"
"""The console's UI process, the parent of its engine: not a target, measured apart."""
MODES = ("plain", "stream")
MODE_TITLES = {"plain": "non-streaming", "stream": "streaming"}
SCREEN = (160, 48)
SESSION = "console"
SETTLE_STEP_S = 0.25
SETTLE_QUIET_S = 0.05
"""Quiet means at most this much CPU (simulator + running routedeck engines) over
`SETTLE_STEP_S`: 20% of a core. The console's UI is not watched: it has no requests to finish,
and its idle redraws run on the other core."""
DRAIN_MAX_S = 10.0
"""The longest wait for the last window's target to finish its backlog before it is stopped,
so that no backlog is frozen and carried into a later window."""
RESUME_MAX_S = 5.0
RESUME_S = 0.6
"""After a SIGCONT, wait at least this long (more than one 0.5 s refresh) before measuring."""
UI_STOP_MAX_S = 3.0
"""The longest wait for the console's UI to stop itself after SIGTSTP (SIGSTOP after that)."""
BREAKER_WAIT_MAX_S = 20.0
"""The longest wait for a target's open circuit breaker to close before its window."""
SATURATED_ERROR_RATIO = 0.01
"""A target that fails more than this share of a window's requests (mostly: no answer within
2 s of the last due time) is saturated at that rate: it is not measured again at that rate or
above in that mode, so its backlog cannot spill into the windows that follow."""

CAPTURE_AT = (0.5, 1.0)
"""When the console's screen is captured, in fractions of a window. The console's UI reads its
engine's snapshot about once a second (its pump waits its 0.5 s refresh after each snapshot,
then the link waits its 0.5 s poll interval before the next request), so captures 1/3 and 2/3
into a 2.5 s window could show one snapshot twice."""

_PORT = re.compile(r"http://127\.0\.0\.1:(\d+)")
_RPS = re.compile(r"(\d+(?:\.\d+)?) req/s")


@dataclass(frozen=True, slots=True)
class Plan:
    """Rates, rounds and window lengths of a run."""

    plain_rates: tuple[float, ...]
    stream_rates: tuple[float, ...]
    rounds: int
    window_s: float
    warmup_s: float
    idle_s: float
    """How long all processes sit idle to measure the console's own CPU."""

    def rates(self, mode: str) -> tuple[float, ...]:
        return self.plain_rates if mode == "plain" else self.stream_rates


FULL = Plan(
    plain_rates=(50, 100, 200),
    stream_rates=(50, 100),
    rounds=3,
    window_s=2.5,
    warmup_s=2.0,
    idle_s=10.0,
)
QUICK = Plan(
    plain_rates=(100,),
    stream_rates=(50,),
    rounds=1,
    window_s=2.5,
    warmup_s=0.5,
    idle_s=3.0,
)


# -- processes --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Proc:
    """Counters of one process by pid, from ``/proc`` (CPU of all threads, in clock ticks)."""

    name: str
    pid: int

    def cpu_seconds(self) -> float:
        with open(f"/proc/{self.pid}/stat", "rb") as f:
            raw = f.read()
        fields = raw[raw.rindex(b")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime

    def _status(self, key: str) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise ServiceError(f"{self.name}: no {key} in /proc/{self.pid}/status")

    def rss_kib(self) -> int:
        return self._status("VmRSS")

    def hwm_kib(self) -> int:
        return self._status("VmHWM")

    def state(self) -> str:
        """The state letter of ``/proc/<pid>/stat`` (``T``: stopped), ``X`` if it is gone."""
        try:
            with open(f"/proc/{self.pid}/stat", "rb") as f:
                raw = f.read()
        except (FileNotFoundError, ProcessLookupError):
            return "X"
        return raw[raw.rindex(b")") + 2 :].split()[0].decode()

    def alive(self) -> bool:
        return self.state() not in ("Z", "X")

    def cmdline(self) -> str:
        try:
            return Path(f"/proc/{self.pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            return ""

    def affinity(self) -> dict[str, str]:
        """``Cpus_allowed_list`` of each thread, keyed ``name/tid``."""
        out: dict[str, str] = {}
        for task in sorted(Path(f"/proc/{self.pid}/task").iterdir()):
            try:
                status = (task / "status").read_text()
            except OSError:
                continue
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            out[f"{fields.get('Name', '?').strip()}/{task.name}"] = fields.get(
                "Cpus_allowed_list", "?"
            ).strip()
        return out

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "stat").read_bytes()
        except OSError:
            continue
        if int(raw[raw.rindex(b")") + 2 :].split()[1]) == pid:
            out.append(int(entry.name))
    return out


def _pin(pid: int, cpus: set[int]) -> dict[str, str]:
    """Set the CPU affinity of every thread of ``pid`` (threads it starts later inherit it from
    the thread that starts them); returns the ``Cpus_allowed_list`` of each thread after."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError, FileNotFoundError):
            os.sched_setaffinity(int(task.name), cpus)
    return Proc("", pid).affinity()


@dataclass(slots=True)
class Console:
    """``routedeck console`` in a detached tmux session on a tmux server of its own: its UI
    process and the engine process the UI starts as its child.

    The pane runs ``sh -c '<console>; echo ...'``: the UI is the shell's child, not tmux's,
    because tmux continues any pane process that stops, which would undo a pause. The pane
    stays after the console exits (``remain-on-exit``), so a crash leaves its traceback.
    """

    socket: str
    ui: Proc
    engine: Proc
    server: Proc
    port: int
    token: str
    """The admin token the console was given and passed on to its engine."""
    config_path: Path
    log_path: Path

    @classmethod
    @contextmanager
    def start(
        cls,
        workdir: Path,
        *,
        sim_port: int,
        code_root: Path,
        engine_cpus: set[int] | None,
        ui_cpus: set[int] | None,
        ready_timeout_s: float = 30.0,
    ) -> Iterator[Console]:
        """Start the console, wait until its header shows its engine's address and that engine
        answers, pin the UI to ``ui_cpus``, yield, stop.

        The console starts on ``engine_cpus``, so its engine child inherits them from birth
        (as ``serve`` does); its UI is moved to ``ui_cpus`` once the engine listens. Stopping
        continues both if paused, sends the UI SIGTERM, then the engine if it outlived the UI
        (SIGKILL for either after 10 s), then kills the tmux server, whatever happened before.
        Raises `ServiceError` if it does not start.
        """
        socket_name = f"routedeck-bench-{os.getpid()}"
        conf = workdir / "tmux.conf"
        conf.write_text(
            "set -g status off\nset -g remain-on-exit on\nset -g default-shell /bin/sh\n"
        )
        config_path = workdir / "console.toml"
        # The bench config of `bench.services`, with a state file of its own: two engines on
        # one SQLite file would contend for its write lock.
        config_path.write_text(proxy_config(sim_port, workdir / "console.db"))
        token = secrets.token_urlsafe(24)
        token_env = "ROUTEDECK_ADMIN_TOKEN"  # the config's [server] admin_token_env default
        argv = [
            "env",
            *(f"--unset={k}" for k in os.environ if k.startswith("ROUTEDECK_") and k != token_env),
            f"PYTHONPATH={code_root}",
            "COLORTERM=truecolor",
            *(["taskset", "-c", ",".join(map(str, sorted(engine_cpus)))] if engine_cpus else []),
            sys.executable,
            "-m",
            "console.cli",
            "console",
            "--config",
            str(config_path),
        ]
        # The token reaches the pane through the tmux server's environment, not through a
        # command line anyone can read in `ps`.
        command = f"{shlex.join(argv)}; echo routedeck console exited with status $?"
        tmux = ["tmux", "-L", socket_name]
        width, height = SCREEN
        server: Proc | None = None
        ui: Proc | None = None
        engine: Proc | None = None
        socket_file = (
            Path(os.environ.get("TMUX_TMPDIR", "/tmp")) / f"tmux-{os.getuid()}" / socket_name
        )
        try:
            try:
                subprocess.run(
                    [
                        *tmux,
                        *("-f", str(conf), "new-session", "-d", "-s", SESSION),
                        *("-x", str(width), "-y", str(height), "-c", str(code_root), command),
                    ],
                    check=True,
                    capture_output=True,
                    timeout=10,
                    env={**os.environ, token_env: token},
                )
                info = _tmux(
                    socket_name,
                    *("display-message", "-p", "-t", SESSION),
                    "#{pid} #{pane_pid} #{socket_path}",
                )
            except (OSError, subprocess.SubprocessError) as exc:
                raise ServiceError(f"cannot start tmux: {exc}") from None
            server_pid, pane, socket_path = info.split(maxsplit=2)
            socket_file = Path(socket_path)
            pane_pid = int(pane)
            server = Proc("tmux", int(server_pid))
            deadline = time.monotonic() + ready_timeout_s
            while ui is None:
                kids = [p for p in _children(pane_pid) if "console.cli" in Proc("", p).cmdline()]
                if kids:
                    ui = Proc("console UI", kids[0])
                elif time.monotonic() > deadline:
                    raise ServiceError(
                        "the console did not start; its pane:\n" + _capture(socket_name)
                    )
                else:
                    time.sleep(0.05)
            log_path = (workdir / "console.db").with_suffix(".log")
            console = cls(socket_name, ui, ui, server, 0, token, config_path, log_path)
            console.port = console.wait_ready(deadline)
            engines = [p for p in _children(ui.pid) if " serve" in Proc("", p).cmdline()]
            if len(engines) != 1:
                raise ServiceError(
                    f"the console UI (pid {ui.pid}) has {len(engines)} engine children "
                    f"(a child whose command line holds ' serve'), not one"
                )
            engine = console.engine = Proc("console engine", engines[0])
            if ui_cpus:
                _pin(ui.pid, ui_cpus)
            yield console
        finally:
            if ui is not None:
                if engine is not None:
                    engine.signal(signal.SIGCONT)  # so that it can act on the UI's SIGTERM
                _stop(ui)
            if engine is not None and engine.alive() and " serve" in engine.cmdline():
                print(
                    f"bench: the console's engine (pid {engine.pid}) outlived its UI's SIGTERM; "
                    "stopping it",
                    file=sys.stderr,
                )
                _stop(engine, expect=" serve")
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                subprocess.run([*tmux, "kill-server"], capture_output=True, timeout=10)
            if server is not None:
                _stop(server, expect="tmux")
            # tmux 3.3 leaves its socket file behind; it is ours (named after this process).
            if socket_file.name == socket_name:
                socket_file.unlink(missing_ok=True)

    def repin_ui(self, cpus: set[int]) -> list[str]:
        """Threads of the UI not on ``cpus`` (started since the last pinning), moved there."""
        strays = [name for name, allowed in self.ui.affinity().items() if _cpus(allowed) != cpus]
        if strays:
            _pin(self.ui.pid, cpus)
        return strays

    def wait_ready(self, deadline: float) -> int:
        """The proxy port from the header, once the proxy answers ``/healthz`` on it."""
        while True:
            screen = self.capture()
            match = _PORT.search(screen.splitlines()[0] if screen else "")
            if match:
                port = int(match.group(1))
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                        return port
                except httpx.HTTPError:
                    pass
            if not self.ui.alive() or time.monotonic() > deadline:
                raise ServiceError(
                    f"the console did not show a listening proxy; its pane:\n{screen}\n"
                    f"its log {self.log_path}:\n{_tail(self.log_path)}"
                )
            time.sleep(0.1)

    def capture(self) -> str:
        return _capture(self.socket)

    async def capture_async(self) -> str:
        process = await asyncio.create_subprocess_exec(
            "tmux",
            "-L",
            self.socket,
            "capture-pane",
            "-p",
            "-t",
            SESSION,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        try:
            async with asyncio.timeout(5):
                out, _ = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            return ""
        return out.decode(errors="replace")

    def size(self) -> str:
        return _tmux(
            self.socket, "display-message", "-p", "-t", SESSION, "#{pane_width}x#{pane_height}"
        )


def _tmux(socket_name: str, *args: str) -> str:
    return subprocess.run(
        ["tmux", "-L", socket_name, *args], check=True, capture_output=True, text=True, timeout=10
    ).stdout.strip()


def _capture(socket_name: str) -> str:
    try:
        return _tmux(socket_name, "capture-pane", "-p", "-t", SESSION)
    except (OSError, subprocess.SubprocessError):
        return ""


def _stop(proc: Proc, expect: str = "console.cli", timeout_s: float = 10.0) -> None:
    """Continue, SIGTERM, wait, SIGKILL: only if the pid still runs the expected command."""
    if not proc.alive() or expect not in proc.cmdline():
        return
    proc.signal(signal.SIGCONT)
    proc.signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while proc.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    if proc.alive() and expect in proc.cmdline():
        proc.signal(signal.SIGKILL)


def _cpus(allowed: str) -> set[int]:
    """The CPUs of a ``Cpus_allowed_list`` (``0``, ``0-1``, ``0,2-3``)."""
    out: set[int] = set()
    for part in allowed.split(","):
        low, _, high = part.partition("-")
        if low.strip().isdigit():
            out.update(range(int(low), int(high or low) + 1))
    return out


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# -- measuring --------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Capture:
    """The console's screen at one instant of a window."""

    at_s: float
    """Seconds after the window's first due time."""
    header: str
    rps: float | None
    """The requests/s the header showed (None if it could not be read)."""
    digest: str
    """SHA-256 of the whole screen (first 16 hex digits): did anything change?"""
    screen: str


@dataclass(frozen=True, slots=True)
class _Mark:
    """Cumulative counters at one instant (seconds)."""

    wall: float
    cpu: dict[str, float]
    busy: dict[str, float]


@dataclass(slots=True)
class Window:
    """One measured window and every process's counters over the same span."""

    mode: str
    target: str
    rate: float
    phase: str
    round: int
    result: WindowResult
    cpu_s: dict[str, float]
    """CPU over the window of ``serve``, ``console`` (the console's engine), ``ui`` (the
    console's UI), ``sim``, ``tmux`` (the terminal) and ``loadgen`` (this process)."""
    other_s: dict[str, float]
    """Busy CPU not spent by those, per CPU when pinned (``cpu0``...), else ``all``."""
    wall_s: float
    drain_s: float
    """How long the last window's target took to go quiet before this window."""
    settle_s: float
    """How long this window's target took to go quiet after being continued."""
    breaker_wait_s: float
    breaker: str
    """Why a breaker of this target's engine was open before the window ("" if none was)."""
    rss_kib: dict[str, int]
    """VmRSS of ``serve``, the console's engine and its UI right after the window."""
    captures: list[Capture] = field(default_factory=list)

    @property
    def answered(self) -> int:
        """Responses the target sent (successes plus error statuses and cut streams)."""
        r = self.result
        lost = sum(v for k, v in r.error_kinds.items() if not k.startswith(("http_", "incomplete")))
        return r.planned - lost

    def rendered(self) -> bool:
        """Whether the console drew this window's traffic: a non-zero req/s in its header, and
        a screen that changed between the captures."""
        return (
            len(self.captures) >= 2
            and any(c.rps for c in self.captures)
            and len({c.digest for c in self.captures}) == len(self.captures)
        )

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
            "ttfb_ms": summarize(r.ttfb_ms) if r.ttfb_ms else None,
            "send_latency_ms": summarize(r.send_latency_ms),
            "send_lag_ms": summarize(r.send_lag_ms),
            "connections": r.connections,
            "max_in_flight": r.max_in_flight,
            "wall_s": self.wall_s,
            "drain_s": self.drain_s,
            "settle_s": self.settle_s,
            "breaker_wait_s": self.breaker_wait_s,
            "breaker": self.breaker,
            "cpu_s": self.cpu_s,
            "loadgen_cpu_window_s": r.cpu_s,
            "other_cpu_s": self.other_s,
            "rss_kib": self.rss_kib,
            "captures": [
                {"at_s": c.at_s, "header": c.header, "rps": c.rps, "screen_sha256": c.digest}
                for c in self.captures
            ],
        }


class OverheadRun:
    """One run against the running simulator, headless proxy and console."""

    def __init__(
        self,
        services: Services,
        console: Console,
        specs: dict[tuple[str, str], RequestSpec],
        plan: Plan,
        *,
        pause: bool,
        cores: tuple[int, int] | None,
    ) -> None:
        self.console = console
        self.specs = specs
        self.plan = plan
        self.pause = pause
        self.cores = cores
        """(routedeck's CPU, the simulator's and load generator's CPU), when pinned."""
        self.procs = {
            "serve": Proc("serve", services.proxy.pid),
            "console": console.engine,
            UI: console.ui,
            "sim": Proc("sim", services.sim.pid),
            "tmux": console.server,
        }
        """``console`` is the console's engine; ``ui`` its UI."""
        self.groups = {"serve": ["serve"], "console": [UI, "console"]}
        """What stopping a target stops, in this order (continuing goes in reverse): the
        console's UI first, so that it never polls a stopped engine."""
        self.ui_stops: dict[str, Any] = {"sigtstp": 0, "sigstop_fallback": 0, "max_wait_s": 0.0}

        def console_log() -> str:
            return console.capture() + "\n" + _tail(console.log_path)

        self._logs = {
            "serve": services.proxy.log_tail,
            "sim": services.sim.log_tail,
            "console": console_log,
            UI: console_log,
        }
        self.paused: set[str] = set()
        self.windows: list[Window] = []
        self.idle: dict[str, Any] = {}
        self.memory: dict[str, dict[str, int]] = {}
        self.requests = dict.fromkeys(ENGINES, 0)
        self.ports = {"serve": services.proxy.port, "console": console.port}
        self.admin_headers: dict[str, dict[str, str]] = {
            "serve": {},  # loopback, no admin token: the admin API is open
            "console": {"authorization": f"Bearer {console.token}"},
        }
        self.ui_strays: list[str] = []
        """Threads of the UI found off its CPUs after the warm-up (and moved), if any."""
        self.saturated: dict[tuple[str, str], float] = {}
        """(mode, target) → the lowest rate at which a window of it failed too many requests."""
        self.skipped: list[dict[str, Any]] = []

    # -- pausing -----------------------------------------------------------------------------

    async def _run_only(self, target: str) -> bool:
        """Stop the routedeck target that is not ``target`` (both for ``direct``), continue
        the other; True if one was continued. ``self.paused`` holds targets."""
        resumed = False
        for engine in ENGINES:
            stop = self.pause and engine != target
            if stop and engine not in self.paused:
                for name in self.groups[engine]:
                    if name == UI:
                        await self._stop_ui()
                    else:
                        self.procs[name].signal(signal.SIGSTOP)
                self.paused.add(engine)
            elif not stop and engine in self.paused:
                self._continue(engine)
                resumed = True
        return resumed

    async def _stop_ui(self) -> None:
        """Stop the console's UI the way Ctrl+Z does: SIGTSTP, on which Textual leaves
        application mode (ending its input and writer threads) and then stops itself. A SIGSTOP
        would skip that, and Textual, which re-enters application mode on every SIGCONT, would
        start two more threads per pause. Falls back to SIGSTOP after `UI_STOP_MAX_S`."""
        ui = self.procs[UI]
        ui.signal(signal.SIGTSTP)
        started = time.monotonic()
        while ui.state() not in ("T", "t", "Z", "X"):
            if time.monotonic() - started > UI_STOP_MAX_S:
                ui.signal(signal.SIGSTOP)
                self.ui_stops["sigstop_fallback"] += 1
                break
            await asyncio.sleep(0.01)
        else:
            self.ui_stops["sigtstp"] += 1
        waited = time.monotonic() - started
        self.ui_stops["max_wait_s"] = max(self.ui_stops["max_wait_s"], waited)

    def _continue(self, engine: str) -> None:
        for name in reversed(self.groups[engine]):
            self.procs[name].signal(signal.SIGCONT)
        self.paused.discard(engine)

    def resume_all(self) -> None:
        for engine in list(self.paused):
            self._continue(engine)

    # -- windows -----------------------------------------------------------------------------

    async def settle(self, minimum_s: float, maximum_s: float) -> float:
        """Wait at least ``minimum_s``, then until the simulator and the running routedeck
        processes are quiet (at most `SETTLE_QUIET_S` of CPU over `SETTLE_STEP_S`), at most
        ``maximum_s``. Returns the seconds waited."""
        watched = [self.procs["sim"]] + [self.procs[e] for e in ENGINES if e not in self.paused]
        return await settle(
            watched,
            minimum_s=minimum_s,
            maximum_s=maximum_s,
            step_s=SETTLE_STEP_S,
            quiet_s=SETTLE_QUIET_S,
        )

    async def _breaker_wait(self, target: str) -> tuple[float, str]:
        """Wait (at most `BREAKER_WAIT_MAX_S`) while a deployment of ``target``'s engine has
        its breaker open or half-open; returns the seconds waited and the first reason seen."""
        url = f"http://127.0.0.1:{self.ports[target]}/admin/snapshot"
        started = time.monotonic()
        reason = ""
        async with httpx.AsyncClient(timeout=5.0, headers=self.admin_headers[target]) as client:
            while time.monotonic() - started < BREAKER_WAIT_MAX_S:
                try:
                    snapshot = (await client.get(url)).json()
                    why = [
                        d["state_reason"]
                        for d in snapshot["deployments"]
                        if d["state_reason"].startswith("breaker")
                    ]
                except (httpx.HTTPError, KeyError, ValueError) as exc:
                    why = [f"no snapshot: {exc!r}"]
                if not why:
                    break
                reason = reason or why[0]
                await asyncio.sleep(0.5)
        return time.monotonic() - started, reason

    def _check_alive(self) -> None:
        for name in ("serve", "console", UI, "sim"):
            if not self.procs[name].alive():
                raise ServiceError(f"{name} died:\n{self._logs[name]()}")

    def _mark(self) -> _Mark:
        cpu = {name: p.cpu_seconds() for name, p in self.procs.items()}
        cpu["loadgen"] = self_cpu_seconds()
        return _Mark(time.perf_counter(), cpu, cpu_busy_seconds())

    def _other(self, a: _Mark, b: _Mark) -> dict[str, float]:
        cpu = {k: b.cpu[k] - a.cpu[k] for k in a.cpu}
        busy = {k: b.busy[k] - a.busy[k] for k in a.busy}
        if self.cores is None:
            return {"all": max(0.0, sum(busy.values()) - sum(cpu.values()))}
        engine_core, harness_core = self.cores
        return {
            f"cpu{engine_core}": max(
                0.0, busy[f"cpu{engine_core}"] - cpu["serve"] - cpu["console"]
            ),
            f"cpu{harness_core}": max(
                0.0,
                busy[f"cpu{harness_core}"] - cpu["sim"] - cpu["loadgen"] - cpu["tmux"] - cpu[UI],
            ),
        }

    async def _captures(self, seconds: float, t0: float) -> list[Capture]:
        out = []
        for frac in CAPTURE_AT:
            await asyncio.sleep(max(0.0, t0 + frac * seconds - time.perf_counter()))
            at = time.perf_counter() - t0
            screen = await self.console.capture_async()
            header = screen.splitlines()[0].strip() if screen else ""
            match = _RPS.search(header)
            out.append(
                Capture(
                    at_s=at,
                    header=header,
                    rps=float(match.group(1)) if match else None,
                    digest=hashlib.sha256(screen.encode()).hexdigest()[:16],
                    screen=screen,
                )
            )
        return out

    async def window(
        self, mode: str, target: str, rate: float, *, phase: str, seconds: float, round_: int = 0
    ) -> Window:
        """Run only ``target``'s routedeck process (unless not pausing), settle, run one window
        and record it (unless it is a warm-up). Raises `ServiceError` if a process died."""
        drain_s = await self.settle(0.1, DRAIN_MAX_S)  # the last target, before it is stopped
        settle_s = 0.0
        if await self._run_only(target):
            settle_s = await self.settle(RESUME_S, RESUME_MAX_S)
        breaker_s, breaker = 0.0, ""
        if target in ENGINES:
            breaker_s, breaker = await self._breaker_wait(target)
        self._check_alive()
        marks: list[_Mark] = []
        captures: list[asyncio.Task[list[Capture]]] = []

        def on_start() -> None:
            marks.append(self._mark())
            captures.append(asyncio.create_task(self._captures(seconds, marks[0].wall)))

        try:
            result = await run_window(
                self.specs[(mode, target)],
                rate=rate,
                duration_s=seconds,
                on_start=on_start,
                on_stop=lambda: marks.append(self._mark()),
            )
            shots = await captures[0]
        finally:
            for task in captures:
                task.cancel()
        a, b = marks
        w = Window(
            mode=mode,
            target=target,
            rate=rate,
            phase=phase,
            round=round_,
            result=result,
            cpu_s={k: b.cpu[k] - a.cpu[k] for k in a.cpu},
            other_s=self._other(a, b),
            wall_s=b.wall - a.wall,
            drain_s=drain_s,
            settle_s=settle_s,
            breaker_wait_s=breaker_s,
            breaker=breaker,
            rss_kib={e: self.procs[e].rss_kib() for e in (*ENGINES, UI)},
            captures=shots,
        )
        if target in ENGINES:
            self.requests[target] += result.planned
        if phase != "warmup":
            self.windows.append(w)
        _progress(w)
        return w

    def _rss(self) -> dict[str, int]:
        return {e: self.procs[e].rss_kib() for e in (*ENGINES, UI)}

    async def measure_idle(self) -> None:
        """Everything running, no traffic, for ``plan.idle_s``: each process's own CPU."""
        await self.settle(0.1, DRAIN_MAX_S)
        self.resume_all()
        settle_s = await self.settle(RESUME_S, RESUME_MAX_S)
        a = self._mark()
        await asyncio.sleep(self.plan.idle_s)
        b = self._mark()
        screen = await self.console.capture_async()
        wall = b.wall - a.wall
        self.idle = {
            "seconds": wall,
            "settle_s": settle_s,
            "cpu_pct": {k: 100.0 * (b.cpu[k] - a.cpu[k]) / wall for k in a.cpu},
            "other_cpu_pct": {k: 100.0 * v / wall for k, v in self._other(a, b).items()},
            "console_header": screen.splitlines()[0].strip() if screen else "",
        }
        self.idle["rss_kib"] = {e: self.procs[e].rss_kib() for e in (*ENGINES, UI)}
        pct = self.idle["cpu_pct"]
        print(
            f"  idle    {wall:4.1f} s: console UI {pct[UI]:.1f}% of a core, console engine "
            f"{pct['console']:.1f}%, serve {pct['serve']:.1f}%, tmux {pct['tmux']:.1f}%",
            file=sys.stderr,
            flush=True,
        )

    async def run(self) -> None:
        """Warm up, measure idle CPU, then the alternated grid; always continues what it
        stopped."""
        plan = self.plan
        try:
            self.memory["rss_kib_start"] = self._rss()
            for mode in MODES:
                for target in TARGETS:
                    await self.window(mode, target, 100, phase="warmup", seconds=plan.warmup_s)
            self.memory["rss_kib_after_warmup"] = self._rss()
            if self.cores is not None:
                self.ui_strays = self.console.repin_ui({self.cores[1]})
            await self.measure_idle()
            for mode in MODES:
                for rate in plan.rates(mode):
                    for r in range(plan.rounds):
                        k = r % len(TARGETS)
                        for target in TARGETS[k:] + TARGETS[:k]:
                            if rate >= self.saturated.get((mode, target), math.inf):
                                self.skipped.append(
                                    {"mode": mode, "target": target, "rate": rate, "round": r}
                                )
                                continue
                            w = await self.window(
                                mode, target, rate, phase="grid", round_=r, seconds=plan.window_s
                            )
                            if target in ENGINES and w.result.error_ratio > SATURATED_ERROR_RATIO:
                                self.saturated.setdefault((mode, target), rate)
            self.memory["rss_kib_end"] = self._rss()
            self.memory["hwm_kib_end"] = {e: self.procs[e].hwm_kib() for e in (*ENGINES, UI)}
        finally:
            self.resume_all()

    # -- figures -----------------------------------------------------------------------------

    def grid(self, mode: str, target: str, rate: float) -> list[Window]:
        return [
            w
            for w in self.windows
            if w.phase == "grid" and w.mode == mode and w.target == target and w.rate == rate
        ]

    def rows(self, mode: str) -> list[dict[str, Any]]:
        """Per rate: pooled percentiles of each target, the differences, CPU, memory."""
        rows = []
        for rate in self.plan.rates(mode):
            ws = {t: self.grid(mode, t, rate) for t in TARGETS}
            row: dict[str, Any] = {"rate": rate}
            for key in ("latency_ms", "ttfb_ms") if mode == "stream" else ("latency_ms",):
                pooled = {
                    t: summarize(x for w in ws[t] for x in getattr(w.result, key)) for t in TARGETS
                }
                by_round: dict[str, list[dict[str, float]]] = {}
                for name, base, other in (
                    ("serve", "direct", "serve"),
                    ("console", "direct", "console"),
                    ("console_minus_serve", "serve", "console"),
                ):
                    by_round[name] = [
                        _added(
                            summarize(
                                x for w in ws[base] if w.round == r for x in getattr(w.result, key)
                            ),
                            summarize(
                                x for w in ws[other] if w.round == r for x in getattr(w.result, key)
                            ),
                        )
                        for r in range(self.plan.rounds)
                    ]
                row[key] = {
                    **pooled,
                    "added": {e: _added(pooled["direct"], pooled[e]) for e in ENGINES},
                    "console_minus_serve": _added(pooled["serve"], pooled["console"]),
                    "by_round": by_round,
                }
            for t in TARGETS:
                row[t] = _target_figures(t, ws[t], self.saturated.get((mode, t)))
            rows.append(row)
        return rows

    def rendering(self) -> dict[str, Any]:
        """The evidence that the console rendered during its windows."""
        console = [w for w in self.windows if w.phase == "grid" and w.target == "console"]
        others = [w for w in self.windows if w.phase == "grid" and w.target != "console"]
        samples = {}
        for mode in MODES:
            top = [w for w in console if w.mode == mode and w.rate == max(self.plan.rates(mode))]
            if top and top[-1].captures:
                samples[mode] = top[-1].captures[-1].screen
        moving = {
            mode: len(
                {c.rps for w in console if w.mode == mode for c in w.captures if c.rps is not None}
            )
            for mode in MODES
        }
        keeping_up = [w for w in console if w.result.error_ratio <= SATURATED_ERROR_RATIO]
        return {
            "console_windows": len(console),
            "console_windows_rendering": sum(w.rendered() for w in console),
            "console_windows_keeping_up": len(keeping_up),
            "console_windows_keeping_up_rendering": sum(w.rendered() for w in keeping_up),
            "distinct_header_rps": moving,
            # A saturated console may well freeze for a second: that is a finding, not a
            # failure of the harness, so only the windows it kept up with must show drawing.
            "verified": bool(keeping_up)
            and all(w.rendered() for w in keeping_up)
            and all(n >= 2 for n in moving.values()),
            "header_rps_by_window": [
                {
                    "mode": w.mode,
                    "rate": w.rate,
                    "round": w.round,
                    "rps": [c.rps for c in w.captures],
                    "at_s": [round(c.at_s, 2) for c in w.captures],
                }
                for w in console
            ],
            "screen_changed_in_other_windows": sum(
                len({c.digest for c in w.captures}) > 1 for w in others
            ),
            "other_windows": len(others),
            "sample_screens": samples,
        }


def _target_figures(
    target: str, ws: Sequence[Window], saturated_at: float | None
) -> dict[str, Any]:
    if not ws:
        return {"windows": 0, "saturated_at": saturated_at}
    planned = sum(w.result.planned for w in ws)
    errors = sum(w.result.errors for w in ws)
    answered = sum(w.answered for w in ws)
    wall = sum(w.wall_s for w in ws)
    out: dict[str, Any] = {
        "windows": len(ws),
        "saturated_at": saturated_at,
        "planned": planned,
        "errors": errors,
        "error_pct": 100.0 * errors / planned if planned else math.nan,
        "achieved_rps_min": min(w.result.achieved_rps for w in ws),
        "send_lag_p99_ms": percentile(sorted(x for w in ws for x in w.result.send_lag_ms), 99),
        "tmux_cpu_pct": 100.0 * sum(w.cpu_s["tmux"] for w in ws) / wall,
        "ui_cpu_pct": 100.0 * sum(w.cpu_s[UI] for w in ws) / wall,
        "loadgen_cpu_pct": 100.0 * sum(w.cpu_s["loadgen"] for w in ws) / wall,
        "sim_cpu_ms_per_request": 1000.0 * sum(w.cpu_s["sim"] for w in ws) / answered
        if answered
        else math.nan,
        "other_cpu_pct": {k: 100.0 * sum(w.other_s[k] for w in ws) / wall for k in ws[0].other_s},
        "rss_kib_max": {e: max(w.rss_kib[e] for w in ws) for e in (*ENGINES, UI)},
    }
    if target in ENGINES:
        cpu = sum(w.cpu_s[target] for w in ws)
        bystander = next(e for e in ENGINES if e != target)
        out |= {
            "engine_cpu_ms_per_request": 1000.0 * cpu / answered if answered else math.nan,
            "engine_cpu_ms_per_request_by_round": [
                1000.0 * w.cpu_s[target] / w.answered if w.answered else math.nan
                for w in sorted(ws, key=lambda w: w.round)
            ],
            "engine_cpu_pct": 100.0 * cpu / wall,
            "bystander_cpu_pct": 100.0 * sum(w.cpu_s[bystander] for w in ws) / wall,
        }
    if target == "console":
        out["ui_cpu_ms_per_request"] = (
            1000.0 * sum(w.cpu_s[UI] for w in ws) / answered if answered else math.nan
        )
    return out


def _added(base: dict[str, float], other: dict[str, float]) -> dict[str, float]:
    return {q: other[q] - base[q] for q in ("p50", "p90", "p95", "p99", "mean")}


def _progress(w: Window) -> None:
    r = w.result
    lat = summarize(r.latency_ms)
    engine = f"cpu {w.cpu_s[w.target]:5.2f}s" if w.target in ENGINES else " " * 10
    engine += f" ui {w.cpu_s[UI]:4.2f}s" if w.target == "console" else " " * 10
    rps = "/".join("-" if c.rps is None else f"{c.rps:.1f}" for c in w.captures)
    print(
        f"  {w.phase:7} {w.mode:6} {w.target:7} {w.rate:4.0f}/s  ok {r.ok:5} err {r.errors:4}"
        f"  p50 {lat['p50']:7.2f} p99 {lat['p99']:8.2f} ms  {engine}"
        f"  console header req/s {rps}",
        file=sys.stderr,
        flush=True,
    )


# -- report -----------------------------------------------------------------------------------


def _f(x: float, width: int = 6, digits: int = 2) -> str:
    return f"{x:{width}.{digits}f}" if not math.isnan(x) else f"{'-':>{width}}"


def _triple(s: dict[str, float]) -> str:
    return f"{_f(s['p50'])} {_f(s['p95'])} {_f(s['p99'], 7)}"


def render(report: dict[str, Any]) -> str:
    """The human-readable tables of a report (as written to JSON by `main`)."""
    meta, idle = report["meta"], report["idle"]
    pct = idle["cpu_pct"]
    lines = [
        f"routedeck console overhead — {meta['date']} — {meta['nproc']} x {meta['cpu_model']}, "
        f"{meta['pinning']}; {meta['isolation']}",
        f"console: `routedeck console` in tmux {meta['console_screen']} (its UI, and its engine "
        f"as a child process), Textual {meta['textual']}, default refresh 0.5 s; upstream: "
        f"routedeck sim --profile {SIM_PROFILE}",
        "latency = due time (open loop) → last body byte; added = target percentile - direct "
        "percentile at the same rate",
        f"idle ({idle['seconds']:.0f} s, no traffic): console UI {pct[UI]:.1f}% of a core, "
        f"console engine {pct['console']:.1f}%, serve {pct['serve']:.1f}%, tmux server "
        f"{pct['tmux']:.1f}%",
        "",
    ]
    for mode in MODES:
        rows = report["grid"][mode]
        for key in ("latency_ms", "ttfb_ms") if mode == "stream" else ("latency_ms",):
            what = "first body byte" if key == "ttfb_ms" else "total"
            lines.append(f"{MODE_TITLES[mode]}, {what}, ms")
            lines.append(
                "  rate |  direct p50    p95     p99 |  serve added p50 p95 p99 | "
                "console added p50 p95 p99 | console-serve p50 / p99 by round"
            )
            for row in rows:
                fig = row[key]
                rounds = ", ".join(
                    f"{a['p50']:.2f}/{a['p99']:.1f}" for a in fig["by_round"]["console_minus_serve"]
                )
                lines.append(
                    f"  {row['rate']:4.0f} | {_triple(fig['direct'])}     | "
                    f"{_triple(fig['added']['serve'])}  | {_triple(fig['added']['console'])}   | "
                    f"{rounds}"
                )
            lines.append("")
        lines.append(
            f"{MODE_TITLES[mode]}, the engines (serve, the console's engine) and the console's "
            "UI under load"
        )
        lines.append(
            "  rate | engine CPU ms/req serve console | engine % of a core serve console | "
            "engine VmRSS MiB serve console | UI % of a core, ms/req, MiB | errors d/s/c | "
            "tmux % | other load % s/c on CPU 0, CPU 1"
        )
        for row in rows:
            s, c = row["serve"], row["console"]
            nan = math.nan
            cores = list(row["direct"]["other_cpu_pct"])
            errors = "/".join(str(row[t].get("errors", "-")) for t in TARGETS)
            other = ", ".join(
                f"{_f(s.get('other_cpu_pct', {}).get(k, nan), 1, 0)}/"
                f"{_f(c.get('other_cpu_pct', {}).get(k, nan), 1, 0)}"
                for k in cores
            )
            lines.append(
                f"  {row['rate']:4.0f} | {_f(s.get('engine_cpu_ms_per_request', nan), 23)} "
                f"{_f(c.get('engine_cpu_ms_per_request', nan), 7)} | "
                f"{_f(s.get('engine_cpu_pct', nan), 24, 1)} "
                f"{_f(c.get('engine_cpu_pct', nan), 7, 1)}"
                f" | {s.get('rss_kib_max', {}).get('serve', nan) / 1024:22.1f} "
                f"{c.get('rss_kib_max', {}).get('console', nan) / 1024:7.1f}"
                f" | {_f(c.get('ui_cpu_pct', nan), 9, 1)} "
                f"{_f(c.get('ui_cpu_ms_per_request', nan), 6)} "
                f"{c.get('rss_kib_max', {}).get(UI, nan) / 1024:6.1f}"
                f" | {errors:>12} | {_f(c.get('tmux_cpu_pct', nan), 6, 1)} | {other}"
            )
        for target in ENGINES:
            if target in report["saturated"].get(mode, {}):
                lines.append(
                    f"  {target} saturated at {report['saturated'][mode][target]:.0f}/s "
                    f"(> {100 * SATURATED_ERROR_RATIO:.0f}% of a window's requests failed): not "
                    "measured again at that rate or above"
                )
        lines.append("")
    rendering = report["rendering"]
    lines.append(
        f"console rendering: {rendering['console_windows_rendering']} of "
        f"{rendering['console_windows']} console windows "
        f"({rendering['console_windows_keeping_up_rendering']} of the "
        f"{rendering['console_windows_keeping_up']} it kept up with) showed a non-zero req/s and "
        "a screen that changed between the captures (halfway, and when the last request was "
        "due); header req/s at the two captures:"
    )
    for item in rendering["header_rps_by_window"]:
        rps = " → ".join("-" if x is None else f"{x:.1f}" for x in item["rps"])
        lines.append(f"  {item['mode']:6} {item['rate']:4.0f}/s round {item['round']}: {rps}")
    mem = report["memory"]
    lines += [
        "",
        "VmRSS MiB (serve / console engine / console UI): "
        + ", ".join(
            f"{label} {mem[k]['serve'] / 1024:.1f} / {mem[k]['console'] / 1024:.1f} / "
            f"{mem[k][UI] / 1024:.1f}"
            for label, k in (
                ("start", "rss_kib_start"),
                ("after warm-up", "rss_kib_after_warmup"),
                ("end", "rss_kib_end"),
                ("peak", "hwm_kib_end"),
            )
        ),
        f"load average before/after: {meta['loadavg_before']} / {meta['loadavg_after']}",
    ]
    pausing = report["ui_pausing"]
    lines.append(
        f"console UI: paused {pausing['sigtstp']} times with SIGTSTP (longest wait to stop "
        f"{pausing['max_wait_s']:.2f} s, {pausing['sigstop_fallback']} SIGSTOP fallbacks); "
        f"{pausing['threads_at_start']} threads at the start, {pausing['threads_at_end']} at "
        "the end"
    )
    if report.get("ui_strays"):
        lines.append(f"UI threads found off their CPU after the warm-up: {report['ui_strays']}")
    return "\n".join(lines)


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


def _check_console(
    console: Console, specs: dict[tuple[str, str], RequestSpec], calibration: dict[str, Any]
) -> None:
    """The console's proxy gives the calibrated answer: as many tokens and SSE events as
    ``routedeck serve``. Raises `ServiceError` otherwise."""
    url = f"http://127.0.0.1:{console.port}/v1/chat/completions"
    headers = {"content-type": "application/json"}
    try:
        with httpx.Client(timeout=10.0) as client:
            plain = client.post(url, content=specs[("plain", "console")].body, headers=headers)
            plain.raise_for_status()
            tokens = plain.json()["usage"]["completion_tokens"]
            streamed = client.post(url, content=specs[("stream", "console")].body, headers=headers)
            streamed.raise_for_status()
            events = streamed.text.count("data: ")
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        raise ServiceError(f"a request to the console's proxy failed: {exc!r}") from exc
    want = (calibration["proxy_completion_tokens"], calibration["proxy_stream_events"])
    if (tokens, events) != want:
        raise ServiceError(
            f"the console's proxy answered {tokens} tokens / {events} SSE events, "
            f"routedeck serve {want[0]} / {want[1]}"
        )


def _on_signal(signum: int, frame: FrameType | None) -> None:
    # SystemExit unwinds every `with` block, so the tmux server and all processes stop.
    raise SystemExit(128 + signum)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/console_overhead.py",
        description="Measure the added latency of the engine `routedeck console` runs (its "
        "child process, the console rendering in tmux) against the headless proxy and the "
        "simulator called directly.",
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run (< 1 minute)")
    parser.add_argument(
        "--no-pin", action="store_true", help="do not pin the processes to separate cores"
    )
    parser.add_argument(
        "--no-pause",
        action="store_true",
        help="keep both routedeck targets running in every window (default: stop the one not "
        "measured: serve, or the console's UI and engine)",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON result")
    parser.add_argument(
        "--ref",
        help="measure this git commit (exported with git archive) instead of the working tree",
    )
    args = parser.parse_args(argv)
    plan = QUICK if args.quick else FULL
    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, _on_signal)

    cpus = sorted(os.sched_getaffinity(0))
    cores: tuple[int, int] | None
    if args.no_pin or len(cpus) < 2:
        engine_cpus = harness_cpus = None
        cores = None
        pinning = "not pinned"
    else:
        engine_cpus, harness_cpus = {cpus[0]}, {cpus[1]}
        cores = (cpus[0], cpus[1])
        # Pin this process (the load generator) before it starts anything: the tmux server
        # it starts (the terminal) inherits CPU 1 too.
        os.sched_setaffinity(0, harness_cpus)
        pinning = (
            f"serve and the console's engine pinned to CPU {cpus[0]}, the console's UI + "
            f"simulator + load generator + tmux to CPU {cpus[1]}"
        )
    isolation = (
        "both routedeck processes run in every window"
        if args.no_pause
        else "the routedeck target not measured is stopped during each window (serve: SIGSTOP; "
        "the console: SIGTSTP to its UI, then SIGSTOP to its engine)"
    )

    started = dt.datetime.now(dt.UTC)
    meta: dict[str, Any] = {
        "command": " ".join(
            [".venv/bin/python", "bench/console_overhead.py", *(argv or sys.argv[1:])]
        ),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "textual": importlib.metadata.version("textual"),
        "tmux": subprocess.run(["tmux", "-V"], capture_output=True, text=True).stdout.strip(),
        "pinning": pinning,
        "isolation": isolation,
        "loadavg_before": _loadavg(),
        "plan": dataclasses.asdict(plan),
        "sim_profile": SIM_PROFILE,
    }
    try:
        import uvloop

        loop_run: Any = uvloop.run
        meta["loadgen_loop"] = "uvloop"
    except ImportError:
        loop_run = asyncio.run
        meta["loadgen_loop"] = "asyncio"

    print(
        f"routedeck console overhead: {pinning}; {isolation}; plan "
        f"{'quick' if args.quick else 'full'}",
        file=sys.stderr,
    )
    with tempfile.TemporaryDirectory(prefix="routedeck-console-bench-") as tmp:
        workdir = Path(tmp)
        try:
            code_root, meta["code"] = prepare_code(args.ref, workdir)
            with (
                Services.start(
                    workdir, sim_cpus=harness_cpus, proxy_cpus=engine_cpus, code_root=code_root
                ) as services,
                Console.start(
                    workdir,
                    sim_port=services.sim.port,
                    code_root=code_root,
                    engine_cpus=engine_cpus,
                    ui_cpus=harness_cpus,
                ) as console,
            ):
                calibration = Bench(services, RUN_PLAN)
                calibration.calibrate()
                specs = {
                    (mode, target): calibration.specs[
                        (mode, "direct" if target == "direct" else "proxy")
                    ]
                    for mode in MODES
                    for target in TARGETS
                }
                for mode in MODES:
                    specs[(mode, "console")] = dataclasses.replace(
                        specs[(mode, "serve")], port=console.port
                    )
                _check_console(console, specs, calibration.calibration)
                meta["console_screen"] = console.size()
                meta["console_port"] = console.port
                meta["console_pids"] = {"ui": console.ui.pid, "engine": console.engine.pid}
                meta["console_engine_cmdline"] = console.engine.cmdline().strip()
                run = OverheadRun(
                    services, console, specs, plan, pause=not args.no_pause, cores=cores
                )
                meta["affinity"] = {name: proc.affinity() for name, proc in run.procs.items()} | {
                    "loadgen": sorted(os.sched_getaffinity(0))
                }
                loop_run(run.run())
                meta["affinity_end"] = {
                    name: proc.affinity() for name, proc in run.procs.items() if proc.alive()
                }
        except (ServiceError, OSError) as exc:
            print(f"bench: {exc}", file=sys.stderr)
            return 1
    meta["loadavg_after"] = _loadavg()
    meta["duration_s"] = round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1)

    report: dict[str, Any] = {
        "meta": meta,
        "calibration": calibration.calibration,
        "idle": run.idle,
        "grid": {mode: run.rows(mode) for mode in MODES},
        "rendering": run.rendering(),
        "saturated": {
            mode: {t: r for (m, t), r in run.saturated.items() if m == mode} for mode in MODES
        },
        "skipped_windows": run.skipped,
        "ui_strays": run.ui_strays,
        "ui_pausing": run.ui_stops
        | {
            "threads_at_start": len(meta["affinity"].get(UI, {})),
            "threads_at_end": len(meta.get("affinity_end", {}).get(UI, {})),
        },
        "memory": run.memory,
        "requests": run.requests,
        "windows": [w.to_json() for w in run.windows],
    }
    path = write_results(args.out, "console-overhead", started, report, quick=args.quick)
    print(render(report))
    print(f"\nfull figures: {path} ({meta['duration_s']:.0f} s run)")
    if not report["rendering"]["verified"]:
        print("bench: the console was not seen rendering in every console window", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
