"""The processes a benchmark measures: the simulated upstream and the proxy, and their counters.

    with Services.start(workdir, sim_cpus={1}, proxy_cpus={0}) as services:
        services.proxy.cpu_seconds()   # user + system CPU of every thread so far
        services.proxy.rss_kib()       # VmRSS now

What a caller may rely on:

- `Services.start` launches ``python -m providers.sim`` (the same as ``routedeck sim``) and
  ``python -m console.cli serve`` (``routedeck serve``) with this interpreter, both on
  ``127.0.0.1`` with a free port, running the code under ``code_root`` (the working tree, or a
  commit written out by `export_ref`), and returns once each has printed its "listening on"
  line.
  A process that exits or stays silent for ``ready_timeout_s`` raises `ServiceError` with the
  tail of its log. Output goes to ``<workdir>/<name>.log``, never to a pipe, so a chatty process
  cannot block on a full pipe.
- With ``litellm=True`` it also starts LiteLLM's proxy (``litellm --config F --num_workers 1``)
  from its own virtualenv, `LITELLM_VENV` (made by ``bench/setup_litellm.sh``), with the config
  of `litellm_config` and the environment of `litellm_env`: nothing phones home, nothing is
  written outside ``workdir`` and that virtualenv, and its one model ``bench-model`` goes to the
  same simulator.
- Pinning is done in the child before ``exec`` (``os.sched_setaffinity(0, cpus)``), so every
  thread the process starts later (the SQLite writer thread, for one) inherits it;
  `Service.affinity` reads it back per thread from ``/proc``.
- Leaving the ``with`` block sends SIGTERM to each (the proxies first), waits up to 10 s each,
  then SIGKILLs. Only these processes, by their pid, are ever signalled.
- CPU and memory figures come from ``/proc/<pid>/stat`` (utime + stime, all threads, in clock
  ticks of ``1/SC_CLK_TCK`` s, so 10 ms resolution) and ``/proc/<pid>/status`` (VmRSS, VmHWM),
  summed over the process and its descendants (a server that forks workers is counted whole;
  children that have exited and been waited for count through the parent's cutime + cstime).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import json
import math
import os
import re
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "CLK_TCK",
    "LITELLM_MODEL",
    "LITELLM_VENV",
    "REPO",
    "SIM_PROFILE",
    "Service",
    "ServiceError",
    "Services",
    "code_identity",
    "cpu_busy_seconds",
    "export_ref",
    "litellm_available",
    "litellm_config",
    "litellm_env",
    "litellm_version",
    "proxy_config",
    "self_cpu_seconds",
]

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "providers", "state", "console")
"""The code under test: run from ``code_root`` (the repository, or an exported commit)."""
CLK_TCK = os.sysconf("SC_CLK_TCK")
SIM_PROFILE = "default:latency_ms=20,ttft_ms=10,tokens_per_s=0,jitter=0"
"""The upstream every benchmark measures against: 20 ms answers, 10 ms to the first streamed
event, every token at once after it, no jitter."""

LITELLM_VENV = Path(__file__).resolve().parent / ".venv-litellm"
"""LiteLLM's own virtualenv, made by ``bench/setup_litellm.sh``; never the project's."""
LITELLM_MODEL = "bench-model"
"""The one model of LiteLLM's config: the simulator's model name, so that LiteLLM's upstream
body can be the client's body as it came."""

_LISTENING = re.compile(r"listening on (http://[^\s:]+:(\d+))")
_UVICORN_RUNNING = re.compile(r"Uvicorn running on (http://[^\s:]+:(\d+))")


class ServiceError(RuntimeError):
    """A benchmarked process did not start or died; the message holds its log's tail."""


def proxy_config(sim_port: int, state_path: Path) -> str:
    """The routedeck config of the benchmark: one OpenAI provider on the simulator, one tier."""
    return f"""\
[server]
port = 0

[state]
path = "{state_path}"

[providers.up]
protocol = "openai"
base_url = "http://127.0.0.1:{sim_port}/v1"

[deployments.up-model]
provider = "up"
model = "bench-model"
price = {{ input_per_mtok = 1.0, output_per_mtok = 2.0 }}

[tiers.low]
deployments = ["up-model"]
"""


def litellm_available() -> bool:
    """Whether ``bench/setup_litellm.sh`` has made `LITELLM_VENV`."""
    return (LITELLM_VENV / "bin" / "litellm").is_file()


def litellm_version() -> str | None:
    """The LiteLLM version installed in `LITELLM_VENV` (from its dist-info), if any."""
    for meta in sorted(LITELLM_VENV.glob("lib/python*/site-packages/litellm-*.dist-info/METADATA")):
        for line in meta.read_text(errors="replace").splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
    return None


def litellm_config(sim_port: int) -> str:
    """LiteLLM's config for the benchmark (YAML): one model on the simulator, the same price as
    routedeck's deployment, no retries, fallbacks, cooldowns, caching, callbacks or database.

    There is no master key (LiteLLM refuses to start without one unless told to): routedeck's
    benchmark config has no client authentication either.
    """
    return f"""\
model_list:
  - model_name: {LITELLM_MODEL}
    litellm_params:
      model: openai/{LITELLM_MODEL}
      api_base: http://127.0.0.1:{sim_port}/v1
      api_key: sk-bench-dummy
      max_retries: 0
    model_info:
      input_cost_per_token: 0.000001
      output_cost_per_token: 0.000002

litellm_settings:
  num_retries: 0
  request_timeout: 30
  cache: false
  telemetry: false
  callbacks: []
  success_callback: []
  failure_callback: []

router_settings:
  num_retries: 0
  fallbacks: []
  disable_cooldowns: true

general_settings:
  dangerously_permit_weak_or_unset_master_key: true
  disable_spend_logs: true
  disable_error_logs: true
  allow_requests_on_db_unavailable: true
"""


# uvicorn's default logging without the access log (routedeck's server runs with
# access_log=False too), keeping the "Uvicorn running on" line `Services.start` waits for.
_LITELLM_LOG_CONFIG = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"default": {"format": "%(levelname)s:     %(message)s"}},
    "handlers": {
        "default": {
            "class": "logging.StreamHandler",
            "formatter": "default",
            "stream": "ext://sys.stdout",
        }
    },
    "loggers": {
        "uvicorn": {"handlers": ["default"], "level": "INFO", "propagate": False},
        "uvicorn.error": {"level": "INFO"},
        "uvicorn.access": {"handlers": ["default"], "level": "WARNING", "propagate": False},
    },
}


def litellm_env(home: Path) -> dict[str, str]:
    """The whole environment LiteLLM runs with: built from nothing, so no credential or proxy
    setting of this shell reaches it, with ``HOME`` = ``home`` and ``TMPDIR`` = ``home/tmp``
    (the caller makes them), and every switch that keeps it from reaching out or writing
    elsewhere."""
    return {
        "PATH": f"{LITELLM_VENV / 'bin'}:/usr/bin:/bin",
        "HOME": str(home),
        "TMPDIR": str(home / "tmp"),
        "LANG": "C.UTF-8",
        "PYTHONUNBUFFERED": "1",
        # Usage telemetry (opt-in in this version; the veto makes sure) and its older switch.
        "LITELLM_TELEMETRY_DISABLED": "True",
        "LITELLM_TELEMETRY": "False",
        # Files LiteLLM otherwise downloads from GitHub at start-up: use the bundled copies.
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",
        "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
        "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
        "LITELLM_LOCAL_BLOG_POSTS": "True",
        "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
        "HF_HUB_OFFLINE": "1",
        "DISABLE_ADMIN_UI": "True",
        "NO_DOCS": "True",
        "DISABLE_SCHEMA_UPDATE": "True",
    }


def export_ref(ref: str, dest: Path) -> str:
    """Write the packages under test as of git ``ref`` into ``dest``; return the commit id.

    Read-only for the repository (``git archive``), so a benchmark can measure a commit while
    the working tree is being edited. Raises `ServiceError` if git cannot resolve ``ref``.
    """
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "--verify", f"{ref}^{{commit}}"],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
        archive = subprocess.run(
            ["git", "archive", "--format=tar", sha, "--", *PACKAGES, "pyproject.toml"],
            cwd=REPO,
            check=True,
            capture_output=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        raise ServiceError(f"cannot export {ref!r} from git: {exc}") from None
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(dest, filter="data")
    return sha


def code_identity(code_root: Path) -> dict[str, str | bool]:
    """What was measured: the repository's HEAD, whether its packages differ from HEAD, and a
    SHA-256 over every source file of the packages under ``code_root``."""
    digest = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((code_root / package).rglob("*")):
            if path.is_file() and path.suffix in (".py", ".toml", ".sql", ".tcss"):
                digest.update(str(path.relative_to(code_root)).encode() + b"\0")
                digest.update(path.read_bytes())
    out: dict[str, str | bool] = {"code_root": str(code_root), "sources_sha256": digest.hexdigest()}
    try:
        out["repo_head"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, check=True, capture_output=True, text=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--", *PACKAGES],
            cwd=REPO,
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        out["worktree_dirty"] = bool(status.strip())
    except (OSError, subprocess.CalledProcessError):
        pass
    return out


def _stat_fields(pid: int | str) -> list[bytes]:
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    return raw[raw.rindex(b")") + 2 :].split()


def _read_stat_ticks(pid: int | str) -> int:
    fields = _stat_fields(pid)
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid``, from ``/proc/<pid>/task/<tid>/children``."""
    out: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = list(Path(f"/proc/{parent}/task").iterdir())
        except (FileNotFoundError, ProcessLookupError):
            continue
        for task in tasks:
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except (FileNotFoundError, ProcessLookupError):
                continue
            out.extend(children)
            todo.extend(children)
    return out


def self_cpu_seconds() -> float:
    """This process's user + system CPU from ``/proc/self/stat`` (same clock as `Service`)."""
    return _read_stat_ticks("self") / CLK_TCK


def cpu_busy_seconds() -> dict[str, float]:
    """Busy (non-idle, non-iowait) seconds per CPU since boot, from ``/proc/stat``."""
    busy: dict[str, float] = {}
    with open("/proc/stat") as f:
        for line in f:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *values = line.split()
            ticks = [int(v) for v in values[:8]]
            busy[name] = (sum(ticks) - ticks[3] - ticks[4]) / CLK_TCK
    return busy


@dataclass
class Service:
    """One running process of the benchmark."""

    name: str
    process: subprocess.Popen[bytes]
    url: str
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def tree(self) -> list[int]:
        """Its pid, then those of its live descendants."""
        return [self.pid, *_descendants(self.pid)]

    def cpu_seconds(self) -> float:
        """User + system CPU of all its threads and its descendants' since it started (children
        that ended count once waited for, through cutime + cstime)."""
        ticks = 0
        for pid in self.tree():
            try:
                fields = _stat_fields(pid)
            except (FileNotFoundError, ProcessLookupError):
                continue  # it ended while we looked
            # utime, stime, cutime, cstime (fields 14 to 17)
            ticks += sum(int(x) for x in fields[11:15])
        return ticks / CLK_TCK

    def thread_cpu_seconds(self) -> dict[str, float]:
        """User + system CPU of each live thread, keyed ``name/tid`` (``/proc/<pid>/task``)."""
        out: dict[str, float] = {}
        for task in Path(f"/proc/{self.pid}/task").iterdir():
            try:
                name = (task / "comm").read_text().strip()
                out[f"{name}/{task.name}"] = _read_stat_ticks(f"{self.pid}/task/{task.name}") / (
                    CLK_TCK
                )
            except (FileNotFoundError, ProcessLookupError):
                continue  # the thread ended while we looked
        return out

    def _status(self, key: str, pid: int | None = None) -> int:
        pid = self.pid if pid is None else pid
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise ServiceError(f"{self.name}: no {key} in /proc/{pid}/status")

    def _tree_status(self, key: str) -> int:
        total = self._status(key)
        for pid in self.tree()[1:]:
            try:
                total += self._status(key, pid)
            except (FileNotFoundError, ProcessLookupError):
                continue
        return total

    def rss_kib(self) -> int:
        """Resident memory now (VmRSS), KiB, of the process and its live descendants."""
        return self._tree_status("VmRSS")

    def hwm_kib(self) -> int:
        """Peak resident memory so far (VmHWM), KiB: the sum of each live process's peak."""
        return self._tree_status("VmHWM")

    def affinity(self) -> dict[str, str]:
        """``Cpus_allowed_list`` of each thread of it and its descendants, by thread name and
        id (a descendant's threads as ``pid:name/tid``)."""
        out: dict[str, str] = {}
        for pid in self.tree():
            prefix = "" if pid == self.pid else f"{pid}:"
            try:
                tasks = sorted(Path(f"/proc/{pid}/task").iterdir())
            except (FileNotFoundError, ProcessLookupError):
                continue
            for task in tasks:
                try:
                    status = (task / "status").read_text()
                except (FileNotFoundError, ProcessLookupError):
                    continue
                fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
                out[f"{prefix}{fields.get('Name', '?').strip()}/{task.name}"] = fields.get(
                    "Cpus_allowed_list", "?"
                ).strip()
        return out

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def signal(self, signum: int) -> None:
        if self.alive():
            self.process.send_signal(signum)

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """SIGTERM, wait up to ``timeout_s``, then SIGKILL; returns the exit status."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        return self.process.returncode


def _stop_children_on_sigterm() -> None:
    """Make SIGTERM end a benchmark like Ctrl-C does: through its ``finally`` blocks, which stop
    the processes it started (Python's default SIGTERM handling skips them and leaves the
    simulator and the proxies running)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def launch(
    name: str,
    argv: Sequence[str],
    workdir: Path,
    cpus: set[int] | None,
    ready_timeout_s: float,
    code_root: Path,
    *,
    ready: re.Pattern[str] = _LISTENING,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> Service:
    """Start ``argv`` and wait for ``ready`` (groups: base URL, port) in its log.

    By default it runs in ``code_root`` with this environment (less ``ROUTEDECK_*``) and
    ``PYTHONPATH=code_root``; with ``env`` and ``cwd`` it runs in ``cwd`` with exactly ``env``.
    """
    _stop_children_on_sigterm()
    log_path = workdir / f"{name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the child owns it; closed below once inherited

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    if cwd is None:
        cwd = code_root
    if env is None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEDECK_")}
        # sys.path entries come before the editable install's finder, so this picks the code.
        env["PYTHONPATH"] = str(code_root)
    try:
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=pin,
            env=env,
        )
    finally:
        log.close()
    deadline = time.monotonic() + ready_timeout_s
    while True:
        text = log_path.read_text(errors="replace")
        match = ready.search(text)
        if match:
            return Service(name, process, match.group(1), int(match.group(2)), log_path)
        if process.poll() is not None or time.monotonic() > deadline:
            if process.poll() is None:
                process.kill()
                process.wait(5)
            raise ServiceError(
                f"{name} did not start (exit status {process.returncode}); "
                f"log {log_path}:\n{text[-3000:]}"
            )
        time.sleep(0.05)


@dataclass
class Services:
    """The simulator and the proxy (and LiteLLM's, if asked), started together; use
    `Services.start` as a context."""

    sim: Service
    proxy: Service
    config_path: Path
    litellm: Service | None = None
    """LiteLLM's proxy, when started with ``litellm=True``."""

    @property
    def servers(self) -> list[Service]:
        """Every process started: the simulator, routedeck, and LiteLLM if it runs."""
        return [self.sim, self.proxy] + ([self.litellm] if self.litellm else [])

    @classmethod
    @contextmanager
    def start(
        cls,
        workdir: Path,
        *,
        sim_cpus: set[int] | None,
        proxy_cpus: set[int] | None,
        proxy_argv: Sequence[str] | None = None,
        code_root: Path = REPO,
        ready_timeout_s: float = 30.0,
        litellm: bool = False,
        litellm_cpus: set[int] | None = None,
        litellm_ready_timeout_s: float = 180.0,
    ) -> Iterator[Services]:
        """Start them, yield them, stop them.

        The simulator and routedeck run with ``code_root`` as working directory and
        ``PYTHONPATH``: the repository (the working tree as it is) or a directory made by
        `export_ref`.

        ``proxy_argv`` replaces the interpreter part of the proxy's command line (the
        arguments ``serve --config F --port 0`` are appended); by default it is
        ``python -m console.cli``.

        With ``litellm`` LiteLLM's proxy is started too, pinned to ``litellm_cpus``, from
        `LITELLM_VENV` in ``workdir/litellm`` (its config, log config, ``HOME`` and
        ``TMPDIR``); it takes 10-60 s to start. Raises `ServiceError` if the virtualenv is
        missing.
        """
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
            ready_timeout_s,
            code_root,
        )
        try:
            config_path = workdir / "bench.toml"
            config_path.write_text(proxy_config(sim.port, workdir / "bench.db"))
            head = list(proxy_argv) if proxy_argv else [python, "-m", "console.cli"]
            proxy = launch(
                "proxy",
                [*head, "serve", "--config", str(config_path), "--port", "0"],
                workdir,
                proxy_cpus,
                ready_timeout_s,
                code_root,
            )
            try:
                lite = (
                    _launch_litellm(
                        workdir, sim.port, litellm_cpus, litellm_ready_timeout_s, code_root
                    )
                    if litellm
                    else None
                )
                try:
                    yield cls(sim, proxy, config_path, lite)
                finally:
                    if lite is not None:
                        lite.stop()
            finally:
                proxy.stop()
        finally:
            sim.stop()


def _launch_litellm(
    workdir: Path, sim_port: int, cpus: set[int] | None, ready_timeout_s: float, code_root: Path
) -> Service:
    if not litellm_available():
        raise ServiceError(
            f"LiteLLM is not installed in {LITELLM_VENV}: run bash bench/setup_litellm.sh"
        )
    home = workdir / "litellm"
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    env = litellm_env(home)
    config = home / "litellm.yaml"
    config.write_text(litellm_config(sim_port))
    log_config = home / "log_config.json"
    log_config.write_text(json.dumps(_LITELLM_LOG_CONFIG))
    return launch(
        "litellm",
        [
            str(LITELLM_VENV / "bin" / "litellm"),
            "--config",
            str(config),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--num_workers",
            "1",
            "--log_config",
            str(log_config),
        ],
        workdir,
        cpus,
        ready_timeout_s,
        code_root,
        ready=_UVICORN_RUNNING,
        env=env,
        cwd=home,
    )


def strict_json(value: Any) -> Any:
    """``value`` with NaN (an empty percentile) as null and keys as strings, so that it
    dumps as strict JSON."""
    if isinstance(value, float):
        return None if math.isnan(value) else value
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value


def write_results(
    out_dir: Path, name: str, started: dt.datetime, report: Any, *, quick: bool = False
) -> Path:
    """Write a benchmark's figures to ``out_dir/<name>-<UTC start>[-quick].json``; the path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    suffix = "-quick" if quick else ""
    path = out_dir / f"{name}-{started.strftime('%Y%m%dT%H%M%SZ')}{suffix}.json"
    path.write_text(json.dumps(strict_json(report), indent=1, allow_nan=False) + "\n")
    return path


def split_cpus(
    *, pin: bool = True, servers: str = "proxy"
) -> tuple[set[int] | None, set[int] | None, str]:
    """The benchmarks' layout: the measured ``servers`` on the first CPU, the simulator and the
    load generator on the second -- this process, pinned here before it starts anything.

    Returns (the servers' CPUs, the harness's CPUs, the layout in words); (None, None,
    "not pinned") when ``pin`` is false or the machine has one CPU."""
    cpus = sorted(os.sched_getaffinity(0))
    if not pin or len(cpus) < 2:
        return None, None, "not pinned"
    os.sched_setaffinity(0, {cpus[1]})
    return (
        {cpus[0]},
        {cpus[1]},
        f"{servers} pinned to CPU {cpus[0]}, simulator + load generator to CPU {cpus[1]}",
    )


class HasCpu(Protocol):
    def cpu_seconds(self) -> float: ...


async def settle(
    processes: Sequence[HasCpu],
    *,
    minimum_s: float = 0.1,
    maximum_s: float = 5.0,
    step_s: float = 0.1,
    quiet_s: float = 0.011,
) -> float:
    """Wait at least ``minimum_s``, then until ``processes`` are quiet -- at most ``quiet_s`` of
    CPU between them over ``step_s`` (the default is one clock tick over 0.1 s) -- or
    ``maximum_s`` have passed. Returns the seconds waited. Every benchmark settles before a
    measured window, so that one window's backlog is not billed to the next."""
    started = time.monotonic()
    await asyncio.sleep(minimum_s)
    while time.monotonic() - started < maximum_s:
        before = sum(p.cpu_seconds() for p in processes)
        await asyncio.sleep(step_s)
        if sum(p.cpu_seconds() for p in processes) - before <= quiet_s:
            break
    return time.monotonic() - started
