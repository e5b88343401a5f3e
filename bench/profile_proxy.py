"""Where the proxy's CPU goes per request: cProfile of the event-loop thread under steady load.

    .venv/bin/python bench/profile_proxy.py [--rate 100] [--seconds 5]

Starts the simulator and the proxy as bench/run.py does (same pinning, same config, same
calibrated prompt), but runs the proxy through bench/profiled_serve.py. After an unprofiled
warm-up it profiles one open-loop window of non-streaming requests and one of streaming
requests, each at ``--rate`` for ``--seconds``, and prints for each:

- the proxy's CPU per request with and without the profiler (its overhead inflates every
  figure, calls most, so read the profile for *shares*, not absolute costs);
- the CPU of each proxy thread over the window (the profile only sees the main thread);
- own time by component (a package of the repository, a third-party library, a stdlib module,
  or C built-ins), in microseconds per request and as a share of the profiled total;
- the top functions by own time and by cumulative time, per request.

Writes ``bench/results/profile-<UTC time>.json`` and keeps the raw ``.prof`` files beside it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import pstats
import shutil
import signal
import sys
import sysconfig
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import run_window, summarize
from bench.run import QUICK, RESULTS, Bench, prepare_code
from bench.services import REPO, Service, ServiceError, Services, split_cpus

HELPER = Path(__file__).resolve().parent / "profiled_serve.py"
_STDLIB = sysconfig.get_paths()["stdlib"]
TOP = 25

# (file, line, function) as pstats keys them, and the tuple pstats stores per function.
_Key = tuple[str, int, str]


def component(filename: str, code_root: Path = REPO) -> str:
    """The package a profiled function belongs to, for grouping own time."""
    if filename == "~" or filename.startswith("<"):
        return "C built-ins"
    if "site-packages/" in filename:
        return filename.split("site-packages/", 1)[1].split("/", 1)[0].removesuffix(".py")
    if filename.startswith(str(code_root)):
        rel = Path(filename).relative_to(code_root)
        return f"routedeck {rel.parts[0]}/"
    if filename.startswith(_STDLIB):
        rel = Path(filename).relative_to(_STDLIB)
        return f"stdlib {rel.parts[0].removesuffix('.py')}"
    return filename


def _label(key: _Key, code_root: Path) -> str:
    filename, line, name = key
    if filename == "~":
        return name
    if filename.startswith(str(code_root)):
        filename = str(Path(filename).relative_to(code_root))
    elif "site-packages/" in filename:
        filename = filename.split("site-packages/", 1)[1]
    elif filename.startswith(_STDLIB):
        filename = str(Path(filename).relative_to(_STDLIB))
    return f"{filename}:{line}({name})"


def summarize_profile(path: Path, requests: int, code_root: Path = REPO) -> dict[str, Any]:
    """Own time by component and the top functions, in microseconds per request.

    "Calls" of a coroutine are its resumptions: cProfile sees each one as a call.
    """
    stats: dict[_Key, tuple[int, int, float, float, Any]] = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    total = sum(tt for _, _, tt, _, _ in stats.values())
    per = 1e6 / max(1, requests)
    groups: dict[str, float] = defaultdict(float)
    for key, (_, _, tt, _, _) in stats.items():
        groups[component(key[0], code_root)] += tt
    by_own = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)[:TOP]
    by_cum = sorted(
        (kv for kv in stats.items() if kv[0][0] != "~"),
        key=lambda kv: kv[1][3],
        reverse=True,
    )[: TOP * 2]
    return {
        "requests": requests,
        "profiled_us_per_request": total * per,
        "components": [
            {"component": name, "us_per_request": tt * per, "share": tt / total}
            for name, tt in sorted(groups.items(), key=lambda kv: kv[1], reverse=True)
        ],
        "top_own": [
            {
                "function": _label(key, code_root),
                "calls_per_request": nc / max(1, requests),
                "own_us_per_request": tt * per,
                "cum_us_per_request": ct * per,
                "share": tt / total,
            }
            for key, (_, nc, tt, ct, _) in by_own
        ],
        "top_cumulative": [
            {
                "function": _label(key, code_root),
                "calls_per_request": nc / max(1, requests),
                "own_us_per_request": tt * per,
                "cum_us_per_request": ct * per,
            }
            for key, (_, nc, tt, ct, _) in by_cum
        ],
    }


def _wait_for(path: Path, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            raise ServiceError(f"the profiled proxy wrote no {path.name} within {timeout_s} s")
        time.sleep(0.05)


async def _profile(
    bench: Bench, proxy: Service, dump_dir: Path, rate: float, seconds: float, code_root: Path
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for n, mode in enumerate(("plain", "stream"), start=1):
        spec = bench.specs[(mode, "proxy")]
        cpu0 = proxy.cpu_seconds()
        warm = await run_window(spec, rate=rate, duration_s=2.0)
        unprofiled = (proxy.cpu_seconds() - cpu0) / max(1, warm.ok) * 1000
        await bench.settle()
        threads0 = proxy.thread_cpu_seconds()
        cpu0 = proxy.cpu_seconds()
        proxy.signal(signal.SIGUSR1)
        await asyncio.sleep(0.2)
        result = await run_window(spec, rate=rate, duration_s=seconds)
        proxy.signal(signal.SIGUSR2)
        await asyncio.to_thread(_wait_for, dump_dir / f"{n}.prof")
        cpu = proxy.cpu_seconds() - cpu0
        threads1 = proxy.thread_cpu_seconds()
        summary = summarize_profile(dump_dir / f"{n}.prof", result.ok, code_root)
        summary.update(
            {
                "rate": rate,
                "seconds": seconds,
                "errors": result.errors,
                "latency_ms_under_profiler": summarize(result.latency_ms),
                "cpu_ms_per_request_unprofiled": unprofiled,
                "cpu_ms_per_request_profiled": cpu / max(1, result.ok) * 1000,
                "thread_cpu_ms_per_request": {
                    ("main" if name.endswith(f"/{proxy.pid}") else name): (
                        threads1[name] - threads0.get(name, 0.0)
                    )
                    / max(1, result.ok)
                    * 1000
                    for name in threads1
                },
            }
        )
        out[mode] = summary
    return out


def render(report: dict[str, Any]) -> str:
    """The printed summary of a profile report."""
    lines = [f"routedeck proxy profile — {report['date']} — {report['pinning']}"]
    for mode, s in report["profiles"].items():
        lines += [
            "",
            f"== {mode}: {s['requests']} requests at {s['rate']:.0f}/s; CPU per request "
            f"{s['cpu_ms_per_request_unprofiled']:.2f} ms unprofiled, "
            f"{s['cpu_ms_per_request_profiled']:.2f} ms under the profiler "
            f"(profiled main-thread own time {s['profiled_us_per_request'] / 1000:.2f} ms)",
            "   threads, CPU ms/request: "
            + ", ".join(
                f"{name} {ms:.3f}"
                for name, ms in sorted(
                    s["thread_cpu_ms_per_request"].items(), key=lambda kv: -kv[1]
                )
                if ms > 0
            ),
            "   own time by component (us/request, share):",
        ]
        lines += [
            f"     {c['us_per_request']:8.0f}  {100 * c['share']:5.1f}%  {c['component']}"
            for c in s["components"][:14]
        ]
        lines.append("   top own time (us/request own, cumulative; calls/request):")
        lines += [
            f"     {f['own_us_per_request']:8.1f} {f['cum_us_per_request']:8.1f} "
            f"{f['calls_per_request']:6.1f}  {f['function']}"
            for f in s["top_own"]
        ]
        lines.append("   top cumulative (us/request cumulative, own; calls/request):")
        lines += [
            f"     {f['cum_us_per_request']:8.1f} {f['own_us_per_request']:8.1f} "
            f"{f['calls_per_request']:6.1f}  {f['function']}"
            for f in s["top_cumulative"]
        ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench/profile_proxy.py",
        description="Profile the proxy's event-loop thread under steady open-loop load.",
    )
    parser.add_argument("--rate", type=float, default=100.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=5.0, help="profiled window length")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the results")
    parser.add_argument(
        "--ref",
        help="profile this git commit (exported with git archive) instead of the working tree",
    )
    args = parser.parse_args(argv)
    if not 0 < args.rate <= 1000 or not 0 < args.seconds <= 60:
        parser.error("--rate must be in (0, 1000] and --seconds in (0, 60]")

    proxy_cpus, sim_cpus, pinning = split_cpus()
    started = dt.datetime.now(dt.UTC)
    stamp = started.strftime("%Y%m%dT%H%M%SZ")
    try:
        import uvloop

        loop_run: Any = uvloop.run
    except ImportError:
        loop_run = asyncio.run
    with tempfile.TemporaryDirectory(prefix="routedeck-profile-") as tmp:
        dump_dir = Path(tmp) / "dumps"
        dump_dir.mkdir()
        try:
            code_root, code = prepare_code(args.ref, Path(tmp))
            with Services.start(
                Path(tmp),
                sim_cpus=sim_cpus,
                proxy_cpus=proxy_cpus,
                proxy_argv=[sys.executable, str(HELPER), str(dump_dir)],
                code_root=code_root,
            ) as services:
                bench = Bench(services, QUICK)
                bench.calibrate()
                profiles = loop_run(
                    _profile(bench, services.proxy, dump_dir, args.rate, args.seconds, code_root)
                )
        except ServiceError as exc:
            print(f"profile: {exc}", file=sys.stderr)
            return 1
        args.out.mkdir(parents=True, exist_ok=True)
        for n, mode in enumerate(("plain", "stream"), start=1):
            shutil.copy(dump_dir / f"{n}.prof", args.out / f"profile-{stamp}-{mode}.prof")
    report = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join(
            [".venv/bin/python", "bench/profile_proxy.py", *(argv or sys.argv[1:])]
        ),
        "pinning": pinning,
        "code": code,
        "profiles": profiles,
    }
    path = args.out / f"profile-{stamp}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(render(report))
    print(f"\nfull figures: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
