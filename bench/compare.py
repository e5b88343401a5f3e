"""Compare two versions of routedeck in one run: their windows alternate on the same machine.

    .venv/bin/python bench/compare.py --base HEAD [--head REF] [--rate 300] [--seconds 10]
                                      [--rounds 4] [--mode plain|stream]

A change that should make the proxy cheaper is judged here, not by two runs of `bench/run.py`
minutes apart: on a shared 2-vCPU machine the same code measures 10-20% apart from one minute to
the next, more than most single changes are worth. This starts one simulator and two proxies --
``--base`` exported from git, ``--head`` from git or (default) the working tree as it is --
pinned as `bench/run.py` pins them (proxies on CPU 0, simulator and load generator on CPU 1),
warms both up, then runs ``--rounds`` rounds of one window per target (direct, base, head, the
order rotating each round) at ``--rate`` for ``--seconds``.

Prints per target CPU per request (the proxy process, every thread), latency p50/p99 and the
latency added over the direct windows of the same rounds, then head/base ratios. Writes
``bench/results/compare-<UTC time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.loadgen import RequestSpec, WindowResult, run_window, summarize
from bench.run import MAX_TOKENS, RESULTS, prepare_code
from bench.services import (
    REPO,
    SIM_PROFILE,
    Service,
    ServiceError,
    export_ref,
    launch,
    proxy_config,
    settle,
    split_cpus,
)

WARMUP = (300.0, 2.0)
"""Rate and seconds of each proxy's unrecorded warm-up."""


def _body(model: str, stream: bool) -> bytes:
    return json.dumps(
        {
            "model": model,
            "max_tokens": MAX_TOKENS,
            "stream": stream,
            "messages": [{"role": "user", "content": "Compare: describe the weather."}],
        }
    ).encode()


async def _window(
    spec: RequestSpec, server: Service, servers: Sequence[Service], rate: float, seconds: float
) -> dict[str, Any]:
    await settle(servers, minimum_s=0.0, maximum_s=3.0)
    marks: list[float] = []
    result: WindowResult = await run_window(
        spec,
        rate=rate,
        duration_s=seconds,
        on_start=lambda: marks.append(server.cpu_seconds()),
        on_stop=lambda: marks.append(server.cpu_seconds()),
    )
    latency = result.ttfb_ms if spec.stream else result.latency_ms
    return {
        "ok": result.ok,
        "errors": result.errors,
        "cpu_s": marks[1] - marks[0],
        "latency_ms": list(latency),
    }


def _summary(windows: list[dict[str, Any]]) -> dict[str, Any]:
    ok = sum(w["ok"] for w in windows)
    latency = summarize(x for w in windows for x in w["latency_ms"])
    return {
        "requests": float(ok),
        "errors": float(sum(w["errors"] for w in windows)),
        "cpu_ms_per_request": 1000 * sum(w["cpu_s"] for w in windows) / max(ok, 1),
        "p50_ms": latency["p50"],
        "p99_ms": latency["p99"],
    }


async def _run(
    args: argparse.Namespace, sim: Service, proxies: dict[str, Service]
) -> dict[str, Any]:
    stream = args.mode == "stream"
    path = "/v1/chat/completions"
    specs = {
        "direct": RequestSpec("127.0.0.1", sim.port, path, _body("bench-model", stream), stream)
    }
    for name, proxy in proxies.items():
        specs[name] = RequestSpec("127.0.0.1", proxy.port, path, _body("low", stream), stream)
    servers = [sim, *proxies.values()]
    for name in proxies:
        await _window(specs[name], proxies[name], servers, *WARMUP)
    order = ["direct", *proxies]
    windows: dict[str, list[dict[str, Any]]] = {name: [] for name in order}
    for r in range(args.rounds):
        for name in order[r % len(order) :] + order[: r % len(order)]:
            server = proxies.get(name, sim)
            w = await _window(specs[name], server, servers, args.rate, args.seconds)
            windows[name].append(w)
            print(
                f"  round {r + 1} {name:>6}: {w['ok']} ok, {w['errors']} errors, "
                f"{1000 * w['cpu_s'] / max(w['ok'], 1):.3f} ms CPU/request",
                file=sys.stderr,
                flush=True,
            )
    summary = {name: _summary(ws) for name, ws in windows.items()}
    # Rounds are adjacent in time, so the ratio within each round cancels most of the machine's
    # drift; their median is the figure to trust, the spread says how much to trust it.
    ratios = sorted(
        (h["cpu_s"] / max(h["ok"], 1)) / (b["cpu_s"] / max(b["ok"], 1))
        for h, b in zip(windows["head"], windows["base"], strict=True)
    )
    summary["head"]["cpu_ratio_rounds"] = ratios
    for name in proxies:
        s = summary[name]
        s["added_p50_ms"] = s["p50_ms"] - summary["direct"]["p50_ms"]
        s["added_p99_ms"] = s["p99_ms"] - summary["direct"]["p99_ms"]
    return summary


def render(meta: dict[str, Any], summary: dict[str, dict[str, Any]]) -> str:
    lines = [
        f"routedeck compare — {meta['started']} — {meta['mode']} at {meta['rate']:.0f}/s, "
        f"{meta['rounds']} rounds of {meta['seconds']:.0f} s — {meta['pinning']}",
        f"  base: {meta['base']}",
        f"  head: {meta['head']}",
        f"  {'target':>6}  {'requests':>8}  {'errors':>6}  {'CPU ms/req':>10}  "
        f"{'p50 ms':>7}  {'p99 ms':>7}  {'added p50':>9}  {'added p99':>9}",
    ]
    for name, s in summary.items():
        added = (
            f"  {s['added_p50_ms']:>9.3f}  {s['added_p99_ms']:>9.3f}" if "added_p50_ms" in s else ""
        )
        lines.append(
            f"  {name:>6}  {s['requests']:>8.0f}  {s['errors']:>6.0f}  "
            f"{s['cpu_ms_per_request']:>10.3f}  {s['p50_ms']:>7.3f}  {s['p99_ms']:>7.3f}{added}"
        )
    base, head = summary["base"], summary["head"]
    ratios: list[float] = head["cpu_ratio_rounds"]
    lines.append(
        f"  head/base: CPU per request {head['cpu_ms_per_request'] / base['cpu_ms_per_request']:.3f}"
        f" (median of rounds {statistics.median(ratios):.3f}, "
        f"range {ratios[0]:.3f}-{ratios[-1]:.3f})"
        f", added p50 {head['added_p50_ms'] - base['added_p50_ms']:+.3f} ms"
        f", added p99 {head['added_p99_ms'] - base['added_p99_ms']:+.3f} ms"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--base", required=True, help="git ref of the version to compare against")
    parser.add_argument("--head", help="git ref of the other version (default: the working tree)")
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--mode", choices=("plain", "stream"), default="plain")
    args = parser.parse_args(argv)

    proxy_cpus, sim_cpus, pinning = split_cpus(servers="proxies")
    meta: dict[str, Any] = {
        "started": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([".venv/bin/python", "bench/compare.py", *(argv or sys.argv[1:])]),
        "mode": args.mode,
        "rate": args.rate,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "pinning": pinning,
    }
    python = sys.executable
    with tempfile.TemporaryDirectory(prefix="routedeck-compare-") as tmp_name:
        tmp = Path(tmp_name)
        try:
            base_root = tmp / "base-code"
            meta["base"] = f"git {args.base} ({export_ref(args.base, base_root)[:12]})"
            head_root, head_info = prepare_code(args.head, tmp / "head")
            meta["head"] = head_info["source"] + (
                f" ({head_info['commit'][:12]})" if "commit" in head_info else ""
            )
            sim = launch(
                "sim",
                [python, "-m", "providers.sim", "--host", "127.0.0.1", "--port", "0",
                 "--seed", "0", "--profile", SIM_PROFILE],
                tmp,
                sim_cpus,
                30.0,
                REPO,
            )  # fmt: skip
        except ServiceError as exc:
            print(f"compare: {exc}", file=sys.stderr)
            return 1
        proxies: dict[str, Service] = {}
        try:
            for name, root in (("base", base_root), ("head", head_root)):
                workdir = tmp / name
                workdir.mkdir(exist_ok=True)
                config = workdir / "bench.toml"
                config.write_text(proxy_config(sim.port, workdir / "bench.db"))
                argv_ = [
                    python,
                    "-m",
                    "console.cli",
                    "serve",
                    "--config",
                    str(config),
                    "--port",
                    "0",
                ]
                proxies[name] = launch(name, argv_, workdir, proxy_cpus, 30.0, root)
            summary = asyncio.run(_run(args, sim, proxies))
        except ServiceError as exc:
            print(f"compare: {exc}", file=sys.stderr)
            return 1
        finally:
            for proxy in proxies.values():
                proxy.stop()
            sim.stop()
    print(render(meta, summary))
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    out = RESULTS / f"compare-{stamp}.json"
    out.write_text(json.dumps({"meta": meta, "summary": summary}, indent=2) + "\n")
    print(f"  written to {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
