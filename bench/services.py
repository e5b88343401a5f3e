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
- Pinning is done in the child before ``exec`` (``os.sched_setaffinity(0, cpus)``), so every
  thread the process starts later (the SQLite writer thread, for one) inherits it;
  `Service.affinity` reads it back per thread from ``/proc``.
- Leaving the ``with`` block sends SIGTERM to both (proxy first), waits up to 10 s each, then
  SIGKILLs. Only these processes, by their pid, are ever signalled.
- CPU and memory figures come from ``/proc/<pid>/stat`` (utime + stime, all threads, in clock
  ticks of ``1/SC_CLK_TCK`` s, so 10 ms resolution) and ``/proc/<pid>/status`` (VmRSS, VmHWM).
"""

from __future__ import annotations

import hashlib
import io
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "CLK_TCK",
    "REPO",
    "SIM_PROFILE",
    "Service",
    "ServiceError",
    "Services",
    "code_identity",
    "cpu_busy_seconds",
    "export_ref",
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

_LISTENING = re.compile(r"listening on (http://[^\s:]+:(\d+))")


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


def _read_stat_ticks(pid: int | str) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        raw = f.read()
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15)


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

    def cpu_seconds(self) -> float:
        """User + system CPU of all its threads since it started."""
        return _read_stat_ticks(self.pid) / CLK_TCK

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

    def _status(self, key: str) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
        raise ServiceError(f"{self.name}: no {key} in /proc/{self.pid}/status")

    def rss_kib(self) -> int:
        """Resident memory now (VmRSS), KiB."""
        return self._status("VmRSS")

    def hwm_kib(self) -> int:
        """Peak resident memory so far (VmHWM), KiB."""
        return self._status("VmHWM")

    def affinity(self) -> dict[str, str]:
        """``Cpus_allowed_list`` of each of its threads, by thread name and id."""
        out: dict[str, str] = {}
        for task in sorted(Path(f"/proc/{self.pid}/task").iterdir()):
            status = (task / "status").read_text()
            fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
            out[f"{fields.get('Name', '?').strip()}/{task.name}"] = fields.get(
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


def _launch(
    name: str,
    argv: Sequence[str],
    workdir: Path,
    cpus: set[int] | None,
    ready_timeout_s: float,
    code_root: Path,
) -> Service:
    log_path = workdir / f"{name}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - the child owns it; closed below once inherited

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    env = {k: v for k, v in os.environ.items() if not k.startswith("ROUTEDECK_")}
    # sys.path entries come before the editable install's finder, so this picks the code.
    env["PYTHONPATH"] = str(code_root)
    try:
        process = subprocess.Popen(
            list(argv),
            cwd=code_root,
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
        match = _LISTENING.search(text)
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
    """The simulator and the proxy, started together; use `Services.start` as a context."""

    sim: Service
    proxy: Service
    config_path: Path

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
    ) -> Iterator[Services]:
        """Start both, yield them, stop both.

        Both run with ``code_root`` as working directory and ``PYTHONPATH``: the repository
        (the working tree as it is) or a directory made by `export_ref`.

        ``proxy_argv`` replaces the interpreter part of the proxy's command line (the
        arguments ``serve --config F --port 0`` are appended); by default it is
        ``python -m console.cli``.
        """
        python = sys.executable
        sim = _launch(
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
            proxy = _launch(
                "proxy",
                [*head, "serve", "--config", str(config_path), "--port", "0"],
                workdir,
                proxy_cpus,
                ready_timeout_s,
                code_root,
            )
            try:
                yield cls(sim, proxy, config_path)
            finally:
                proxy.stop()
        finally:
            sim.stop()
