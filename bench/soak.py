"""Memory and the state writer over a long run: is routedeck flat over a million requests?

    .venv/bin/python bench/soak.py [--requests 1000000] [--rate 900] [--window 60] [--direct-s 5]

Starts the simulator and ``routedeck serve`` as bench/run.py does (same config, same pinning),
then sends non-streaming requests open-loop at ``--rate`` in windows of ``--window`` seconds
until ``--requests`` were sent. After each window it records the proxy's resident memory
(VmRSS of its process tree), the state writer's queue and totals (``state_queue`` in
``GET /admin/snapshot``, rows in the ``requests`` table), errors, latency percentiles and CPU
per request; then it sends the same schedule straight to the simulator for ``--direct-s``
seconds, so that each window's added latency (proxied percentile - direct percentile) is that
of a proxy that has been running for as long, not of one that started quiet. The summary compares the first and last tenth of the run: memory is
"flat" when the last tenth's mean RSS is within 5% of the first's after warm-up, and the
writer "keeps up" when its queue never held more than one second of traffic and every request
reached the table.

Writes ``bench/results/soak-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import sqlite3
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from bench.loadgen import RequestSpec, percentile, run_window
from bench.services import REPO, Services, split_cpus

RESULTS = REPO / "bench" / "results"
PROMPT = "Rewrite politely: the report is late again."


def _snapshot(base_url: str) -> dict[str, Any]:
    with urllib.request.urlopen(base_url + "/admin/snapshot", timeout=10) as response:
        data: dict[str, Any] = json.loads(response.read())
    return data


def _rows(state_path: Path) -> int:
    with sqlite3.connect(f"file:{state_path}?mode=ro", uri=True) as db:
        return int(db.execute("SELECT COUNT(*) FROM requests").fetchone()[0])


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    windows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="routedeck-soak-") as tmp:
        workdir = Path(tmp)
        proxy_cpus, sim_cpus, _ = split_cpus()
        with Services.start(workdir, sim_cpus=sim_cpus, proxy_cpus=proxy_cpus) as services:
            proxy = services.proxy

            def spec(port: int, model: str) -> RequestSpec:
                body = orjson.dumps(
                    {
                        "model": model,
                        "messages": [{"role": "user", "content": PROMPT}],
                        "max_tokens": 64,
                    }
                )
                return RequestSpec("127.0.0.1", port, "/v1/chat/completions", body)

            proxied = spec(proxy.port, "low")
            direct = spec(services.sim.port, "bench-model")
            sent = 0
            idle_rss = proxy.rss_kib()
            while sent < args.requests:
                duration = min(args.window, (args.requests - sent) / args.rate)
                cpu0 = proxy.cpu_seconds()
                result = await run_window(proxied, rate=args.rate, duration_s=duration)
                cpu = proxy.cpu_seconds() - cpu0
                sent += result.planned
                snap = _snapshot(proxy.url)
                latency = sorted(result.latency_ms)
                row = {
                    "sent": sent,
                    "rss_mib": proxy.rss_kib() / 1024,
                    "state_queue": snap["state_queue"],
                    "errors": result.error_ratio,
                    "p50_ms": percentile(latency, 50),
                    "p99_ms": percentile(latency, 99),
                    "cpu_ms_per_request": cpu * 1000 / max(result.planned, 1),
                    "at": time.time(),
                }
                added = ""
                if args.direct_s > 0:
                    # The same schedule straight to the simulator right after: what the
                    # window's percentiles would be without routedeck.
                    base = await run_window(direct, rate=args.rate, duration_s=args.direct_s)
                    base_latency = sorted(base.latency_ms)
                    row["direct_p50_ms"] = percentile(base_latency, 50)
                    row["direct_p99_ms"] = percentile(base_latency, 99)
                    row["added_p50_ms"] = row["p50_ms"] - row["direct_p50_ms"]
                    row["added_p99_ms"] = row["p99_ms"] - row["direct_p99_ms"]
                    added = f"  added p50 {row['added_p50_ms']:5.2f} p99 {row['added_p99_ms']:7.2f}"
                windows.append(row)
                print(
                    f"{sent:>9} sent  RSS {row['rss_mib']:6.1f} MiB  queue {row['state_queue']:>6}"
                    f"  err {row['errors'] * 100:5.2f}%  p50 {row['p50_ms']:6.2f} ms"
                    f"  p99 {row['p99_ms']:7.2f} ms{added}  CPU {row['cpu_ms_per_request']:.3f} ms/req",
                    file=sys.stderr,
                    flush=True,
                )
            stored = _rows(services.config_path.parent / "bench.db")
    tenth = max(1, len(windows) // 10)
    first = windows[1 : 1 + tenth] or windows[:tenth]  # the first window is warm-up
    last = windows[-tenth:]

    def mean(rows: list[dict[str, Any]], key: str) -> float:
        return float(sum(r[key] for r in rows)) / len(rows)

    growth = mean(last, "rss_mib") / mean(first, "rss_mib") - 1
    max_queue = max(r["state_queue"] for r in windows)
    return {
        "requests": sent,
        "rate": args.rate,
        "idle_rss_mib": idle_rss / 1024,
        "rss_first_tenth_mib": mean(first, "rss_mib"),
        "rss_last_tenth_mib": mean(last, "rss_mib"),
        "rss_growth": growth,
        "memory_flat": abs(growth) <= 0.05,
        "max_state_queue": max_queue,
        "rows_stored": stored,
        "writer_keeps_up": max_queue <= args.rate and stored >= sent,
        "cpu_ms_per_request": mean(windows, "cpu_ms_per_request"),
        "added_p50_ms": sorted(r["added_p50_ms"] for r in windows)[len(windows) // 2]
        if args.direct_s > 0
        else None,
        "added_p99_ms_range": [
            min(r["added_p99_ms"] for r in windows),
            max(r["added_p99_ms"] for r in windows),
        ]
        if args.direct_s > 0
        else None,
        "windows": windows,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=900.0)
    parser.add_argument("--window", type=float, default=60.0, help="seconds per sample")
    parser.add_argument(
        "--direct-s",
        type=float,
        default=5.0,
        help="after each window, this many seconds straight to the simulator (0: none)",
    )
    args = parser.parse_args()
    report = asyncio.run(soak(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"soak-{stamp}.json"
    out.write_text(json.dumps(report, indent=2))
    print(
        f"{report['requests']} requests at {report['rate']:g}/s: RSS "
        f"{report['rss_first_tenth_mib']:.1f} MiB (first tenth) -> "
        f"{report['rss_last_tenth_mib']:.1f} MiB (last tenth), {report['rss_growth'] * 100:+.1f}%"
        f" ({'flat' if report['memory_flat'] else 'GROWING'}); state queue at most "
        f"{report['max_state_queue']} rows; {report['rows_stored']} rows stored "
        f"({'the writer kept up' if report['writer_keeps_up'] else 'the writer FELL BEHIND'});"
        f" CPU {report['cpu_ms_per_request']:.3f} ms/request"
        + (
            f"; added latency p50 {report['added_p50_ms']:.2f} ms (median window), p99 "
            f"{report['added_p99_ms_range'][0]:.2f}-{report['added_p99_ms_range'][1]:.2f} ms"
            if report["added_p50_ms"] is not None
            else ""
        )
        + f"\nfull figures: {out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
