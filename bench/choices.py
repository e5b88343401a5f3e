"""The library choices on routedeck's request path, each measured on this machine.

    .venv/bin/python bench/choices.py            # the full run, two to three minutes
    .venv/bin/python bench/choices.py --quick    # a smoke check, under 30 seconds
    .venv/bin/python bench/choices.py --aiohttp-python /tmp/venv/bin/python
                                      # also measure httpx over aiohttp under that interpreter

Four measurements, each a comparison of the library routedeck uses with its alternatives:

1. **Event loop**: uvloop against the standard asyncio loop, for the same work: sequential
   non-streaming POSTs through routedeck's upstream client (`providers.http1.Pool`) to the
   simulator, and round trips of a 64-byte message to an echo server in the same loop.
2. **Upstream HTTP client** (on uvloop, as routedeck serves): `providers.http1.Pool` against
   ``httpx.AsyncClient`` (default transport, keep-alive), and httpx over an aiohttp-backed
   transport. aiohttp is not a dependency of routedeck, so that row runs in a subprocess under
   another interpreter: the python of ``bench/.venv-litellm`` (made by
   ``bench/setup_litellm.sh``; LiteLLM's own transport, built as LiteLLM builds it) and each
   ``--aiohttp-python`` (the ``httpx-aiohttp`` package's ``AiohttpTransport``, where it is
   installed). Each subprocess measures plain httpx too, so its aiohttp rows compare with httpx
   in the same process; without any aiohttp the row is skipped with a message.
3. **JSON**: orjson against the standard library's json (and pydantic-core's ``from_json`` /
   ``to_json``, when importable): ``loads`` of a chat request body, ``dumps`` of a chat
   completion response with usage.
4. **HTTP server parsing**: uvicorn with ``http="httptools"`` against ``http="h11"`` serving a
   trivial ASGI app (a small JSON answer), each in its own process, driven by `bench.loadgen`
   at 500 requests/s for 5 s per window, the two alternating for 3 rounds (`FULL`); the figure
   is the server process's CPU per request, from ``/proc/<pid>/stat``.

Measurements 1 and 2 run against the simulator with no added latency
(`CLIENT_SIM_PROFILE`), so that thousands of sequential calls take seconds; they report this
process's CPU (``time.process_time``: every thread) and wall time per call, after a warm-up, as
the median over repetitions whose order rotates. As in `bench/run.py`, the measured side is
pinned to the first CPU and the other side (simulator, load generator) to the second.

Prints progress lines on stderr, then one table per measurement on stdout: CPU (and wall) per
operation, and ratios to routedeck's choice. Writes every sample to
``bench/results/choices-<UTC time>.json``; nothing is asserted about the figures. Exit status:
0 when the run completed, 1 when a process failed to start.

This file also runs as the aiohttp subprocess (``--worker``) and as the uvicorn server
(``--serve``), so at module level it imports only the standard library and `bench.services`
(which does too): the other interpreters need httpx and aiohttp, nothing of routedeck's.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import importlib
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, replace
from importlib import metadata
from pathlib import Path
from typing import Any, cast

if not __package__:  # run as a script: make `bench` importable from the repository root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.services import (
    LITELLM_VENV,
    REPO,
    Service,
    ServiceError,
    launch,
    litellm_env,
    write_results,
)

SCRIPT = Path(__file__).resolve()
RESULTS = REPO / "bench" / "results"
CLIENT_SIM_PROFILE = "default:latency_ms=0,ttft_ms=0,tokens_per_s=0,jitter=0"
"""The simulator of measurements 1 and 2: `bench.services.SIM_PROFILE` without its 20 ms."""
MODEL = "bench-model"
PATH = "/v1/chat/completions"
HEADERS = ((b"content-type", b"application/json"), (b"authorization", b"Bearer sk-bench"))
"""What every client sends besides its own framing headers."""
ECHO_BYTES = 64
_UVICORN_RUNNING = re.compile(r"Uvicorn running on (http://[^\s:]+:(\d+))")
_DEPENDENCIES = (
    "uvloop",
    "httpx",
    "httpcore",
    "httptools",
    "orjson",
    "pydantic-core",
    "uvicorn",
    "h11",
    "aiohttp",
    "httpx-aiohttp",
    "litellm",
)

Call = Callable[[], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class Plan:
    """How many operations, repetitions and seconds each measurement takes."""

    calls: int
    """Sequential POSTs per sample (measurements 1 and 2)."""
    warmup: int
    """Unrecorded calls before each sample, on the same client."""
    reps: int
    echoes: int
    json_ops: int
    json_reps: int
    rate: float
    seconds: float
    rounds: int
    server_warmup_s: float


FULL = Plan(
    calls=2000,
    warmup=200,
    reps=7,
    echoes=10000,
    json_ops=20000,
    json_reps=7,
    rate=500.0,
    seconds=5.0,
    rounds=3,
    server_warmup_s=1.0,
)
QUICK = Plan(
    calls=300,
    warmup=50,
    reps=2,
    echoes=2000,
    json_ops=2000,
    json_reps=3,
    rate=500.0,
    seconds=1.0,
    rounds=1,
    server_warmup_s=0.5,
)

# -- what the clients send and the JSON measurement parses ----------------------------------------

CHAT_REQUEST: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "messages": [
        {
            "role": "system",
            "content": "You are a concise assistant for a support team. Answer in plain "
            "English, cite the ticket number when one is given, and never invent order data.",
        },
        {"role": "user", "content": "Ticket 48213: the customer says the invoice shows two "
         "charges for the same month. What should I check first?"},
        {
            "role": "assistant",
            "content": "Check whether the second charge is a pending authorisation that was "
            "never captured; those drop off within five business days.",
        },
        {"role": "user", "content": "It was captured on both dates. Draft a reply that "
         "apologises and says the refund is on its way."},
    ],
    "temperature": 0.2,
    "max_tokens": 256,
    "stream": False,
    "user": "agent-17",
}  # fmt: skip
"""A typical non-streaming chat request: a system prompt and a few turns (about 800 bytes)."""

CHAT_RESPONSE: dict[str, Any] = {
    "id": "chatcmpl-9xQeT4mZ2bV8kH1rN6sL0pW3aY7c",
    "object": "chat.completion",
    "created": 1767225600,
    "model": "gpt-4o-mini-2024-07-18",
    "choices": [
        {
            "index": 0,
            "message": {
                "role": "assistant",
                "content": "Hello, and thank you for your patience. I am sorry that your "
                "invoice for March shows two charges for the same month: that should not have "
                "happened. We have confirmed that both were captured, and a refund for the "
                "second charge has been issued today. It usually appears on your statement "
                "within five to seven business days, depending on your bank. Ticket 48213 "
                "stays open until you confirm the refund has arrived; reply to this message if "
                "anything looks wrong.",
                "refusal": None,
                "annotations": [],
            },
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {
        "prompt_tokens": 182,
        "completion_tokens": 96,
        "total_tokens": 278,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": 0,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    },
    "service_tier": "default",
    "system_fingerprint": "fp_0ba0d124f1",
}
"""A typical chat completion with usage, as OpenAI answers it (about 1.2 KB)."""


def _sim_body() -> bytes:
    """The body `bench/run.py` sends (its `request_body`, non-streaming), to the simulator's model."""
    from bench.run import request_body

    return request_body(MODEL, "Compare: describe the weather.", stream=False)


# -- small helpers ---------------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _versions() -> dict[str, str]:
    return {name: v for name in _DEPENDENCIES if (v := _version(name)) is not None}


def _progress(t0: float, what: str) -> None:
    print(f"choices: {time.monotonic() - t0:5.1f} s  {what}", file=sys.stderr, flush=True)


def _rotated(names: Sequence[str], n: int) -> list[str]:
    k = n % len(names)
    return [*names[k:], *names[:k]]


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if name == "uvloop":
        uvloop = importlib.import_module("uvloop")
        factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
        return factory
    return asyncio.new_event_loop


def _has_uvloop() -> bool:
    try:
        importlib.import_module("uvloop")
    except ImportError:
        return False
    return True


async def _timed(call: Call, n: int) -> tuple[float, float]:
    """CPU and wall µs per call of ``n`` sequential awaits of ``call``."""
    gc.collect()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(n):
        await call()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return cpu / n * 1e6, wall / n * 1e6


ClientFactory = Callable[[str, bytes], Any]
"""``factory(sim_url, body)``: an async context manager yielding one `Call` (a POST)."""


def _sample(loop: str, factory: ClientFactory, url: str, body: bytes, plan: Plan) -> list[float]:
    """One sample on a fresh loop and client: ``[cpu_us, wall_us]`` per call after a warm-up."""

    async def run() -> tuple[float, float]:
        async with factory(url, body) as call:
            await _timed(call, plan.warmup)
            return await _timed(call, plan.calls)

    with asyncio.Runner(loop_factory=_loop_factory(loop)) as runner:
        cpu, wall = runner.run(run())
    return [cpu, wall]


def _samples(
    variants: dict[str, tuple[str, ClientFactory]], url: str, body: bytes, plan: Plan
) -> dict[str, list[list[float]]]:
    """``plan.reps`` samples of each variant (name: loop, client), the order rotating."""
    out: dict[str, list[list[float]]] = {name: [] for name in variants}
    for rep in range(plan.reps):
        for name in _rotated(list(variants), rep):
            loop, factory = variants[name]
            out[name].append(_sample(loop, factory, url, body, plan))
    return out


def _summary(samples: list[list[float]]) -> dict[str, Any]:
    return {
        "cpu_us": _median([s[0] for s in samples]),
        "wall_us": _median([s[1] for s in samples]),
        "samples": samples,
    }


# -- the clients -----------------------------------------------------------------------------------


@asynccontextmanager
async def _routedeck_client(url: str, body: bytes) -> AsyncIterator[Call]:
    from providers.http1 import Pool, Timeouts

    timeouts = Timeouts(connect=5.0, read=30.0)
    async with Pool(url + "/v1") as pool:

        async def call() -> None:
            response = await pool.post("/chat/completions", body, HEADERS[1:], timeouts)
            if response.status != 200:
                raise RuntimeError(f"the simulator answered {response.status}")

        yield call


def _httpx_client(transport: Callable[[], Any] | None) -> ClientFactory:
    """httpx.AsyncClient, with its default transport or ``transport()``'s."""

    @asynccontextmanager
    async def factory(url: str, body: bytes) -> AsyncIterator[Call]:
        httpx = importlib.import_module("httpx")
        headers = {k.decode(): v.decode() for k, v in HEADERS}
        kwargs = {} if transport is None else {"transport": transport()}
        async with httpx.AsyncClient(base_url=url, **kwargs) as client:

            async def call() -> None:
                response = await client.post(PATH, content=body, headers=headers)
                if response.status_code != 200 or not response.content:
                    raise RuntimeError(f"the simulator answered {response.status_code}")

            yield call

    return factory


def _aiohttp_transports() -> tuple[dict[str, Callable[[], Any]], list[str]]:
    """The aiohttp-backed httpx transports importable here, by row name, and why others are
    not."""
    found: dict[str, Callable[[], Any]] = {}
    missing: list[str] = []
    try:
        transport = importlib.import_module("httpx_aiohttp").AiohttpTransport
    except ImportError as exc:
        missing.append(f"httpx-aiohttp: {exc}")
    else:
        found[f"httpx + httpx-aiohttp {_version('httpx-aiohttp')} AiohttpTransport"] = transport
    try:
        handler = importlib.import_module("litellm.llms.custom_httpx.http_handler")
    except ImportError as exc:
        missing.append(f"litellm: {exc}")
    else:
        name = f"httpx + LiteLLM {_version('litellm')} LiteLLMAiohttpTransport"
        found[name] = handler.AsyncHTTPHandler.create_aiohttp_transport
    return found, missing


def _worker(args: argparse.Namespace) -> int:
    """The aiohttp subprocess: print one JSON line of samples (plain httpx as the control)."""
    plan = QUICK if args.quick else FULL
    loop = "uvloop" if _has_uvloop() else "asyncio"
    transports, missing = _aiohttp_transports()
    variants: dict[str, tuple[str, ClientFactory]] = {"httpx": (loop, _httpx_client(None))}
    for name, transport in transports.items():
        variants[name] = (loop, _httpx_client(transport))
    out: dict[str, Any] = {
        "executable": sys.executable,
        "python": platform.python_version(),
        "versions": _versions(),
        "loop": loop,
        "missing": missing,
    }
    if transports:
        parser = importlib.import_module("aiohttp.http_parser").HttpResponseParser
        out["aiohttp_response_parser"] = f"{parser.__module__}.{parser.__qualname__}"
        body = bytes.fromhex(args.body)
        out["rows"] = {k: _summary(v) for k, v in _samples(variants, args.url, body, plan).items()}
    print(json.dumps(out), flush=True)
    return 0


def _run_worker(python: str, url: str, body: bytes, quick: bool, home: Path) -> dict[str, Any]:
    """Run `_worker` under ``python``; a dict with ``error`` if it could not measure."""
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    argv = [python, str(SCRIPT), "--worker", "--url", url, "--body", body.hex()]
    try:
        done = subprocess.run(
            argv + (["--quick"] if quick else []),
            cwd=home,
            env=litellm_env(home),  # from nothing: LiteLLM offline, no credential of this shell
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return {"executable": python, "error": str(exc)}
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-8:])
        return {"executable": python, "error": f"exit status {done.returncode}: {tail}"}
    result: dict[str, Any] = json.loads(lines[-1])
    if not result.get("rows"):
        result["error"] = "no aiohttp transport importable (" + "; ".join(result["missing"]) + ")"
    return result


# -- 1. event loop ---------------------------------------------------------------------------------


class _Echo(asyncio.Protocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class _EchoClient(asyncio.Protocol):
    def __init__(self) -> None:
        self.waiter: asyncio.Future[None] | None = None
        self.pending = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        self.pending -= len(data)
        if self.pending <= 0 and self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    async def round_trip(self, message: bytes) -> None:
        self.waiter = asyncio.get_running_loop().create_future()
        self.pending = len(message)
        self.transport.write(message)
        await self.waiter


@asynccontextmanager
async def _echo(url: str, body: bytes) -> AsyncIterator[Call]:
    """Both ends of a loopback echo in this loop; a call is one 64-byte round trip."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(_Echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, client = await loop.create_connection(_EchoClient, "127.0.0.1", port)
    message = b"x" * ECHO_BYTES

    async def call() -> None:
        await client.round_trip(message)

    try:
        yield call
    finally:
        transport.close()
        server.close()
        await server.wait_closed()


def _event_loop(url: str, body: bytes, plan: Plan) -> dict[str, Any]:
    loops = ("asyncio", "uvloop")
    posts = _samples({name: (name, _routedeck_client) for name in loops}, url, body, plan)
    echo_plan = replace(plan, calls=plan.echoes)
    echoes = _samples({name: (name, _echo) for name in loops}, url, body, echo_plan)
    return {
        "posts": {name: _summary(s) for name, s in posts.items()},
        "echo": {name: _summary(s) for name, s in echoes.items()},
    }


# -- 2. upstream HTTP client -----------------------------------------------------------------------


def _clients(
    url: str,
    body: bytes,
    plan: Plan,
    pythons: Sequence[str],
    quick: bool,
    workdir: Path,
    t0: float,
) -> dict[str, Any]:
    rows = _samples(
        {"routedeck Pool": ("uvloop", _routedeck_client), "httpx": ("uvloop", _httpx_client(None))},
        url,
        body,
        plan,
    )
    out: dict[str, Any] = {
        "in_process": {
            "executable": sys.executable,
            "python": platform.python_version(),
            "rows": {name: _summary(s) for name, s in rows.items()},
        },
        "aiohttp": [],
    }
    if not pythons:
        out["aiohttp_skipped"] = (
            f"no interpreter with aiohttp: {LITELLM_VENV} is missing (bash bench/setup_litellm.sh)"
            " and no --aiohttp-python was given"
        )
    for i, python in enumerate(pythons):
        _progress(t0, f"2. httpx over aiohttp under {python}")
        out["aiohttp"].append(_run_worker(python, url, body, quick, workdir / f"worker-{i}"))
    return out


# -- 3. JSON ---------------------------------------------------------------------------------------


def _per_op_us(fn: Callable[[], object], n: int) -> float:
    gc.collect()
    cpu0 = time.process_time()
    for _ in range(n):
        fn()
    return (time.process_time() - cpu0) / n * 1e6


def _json(plan: Plan) -> dict[str, Any]:
    import orjson

    request = orjson.dumps(CHAT_REQUEST)
    response = CHAT_RESPONSE
    ops: dict[str, dict[str, Callable[[], object]]] = {
        "loads": {
            "orjson": lambda: orjson.loads(request),
            "json": lambda: json.loads(request),
        },
        "dumps": {
            "orjson": lambda: orjson.dumps(response),
            "json": lambda: json.dumps(response, separators=(",", ":")).encode(),
        },
    }
    try:
        import pydantic_core
    except ImportError:
        pass
    else:
        ops["loads"]["pydantic_core"] = lambda: pydantic_core.from_json(request)
        ops["dumps"]["pydantic_core"] = lambda: pydantic_core.to_json(response)
    for fns in ops["loads"].values():
        if fns() != CHAT_REQUEST:
            raise RuntimeError("a JSON parser disagreed with the others")
    out: dict[str, Any] = {
        "request_bytes": len(request),
        "response_bytes": len(orjson.dumps(response)),
        "ops": plan.json_ops,
    }
    for op, variants in ops.items():
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for rep in range(plan.json_reps):
            for name in _rotated(list(variants), rep):
                samples[name].append(_per_op_us(variants[name], plan.json_ops))
        out[op] = {name: {"us": _median(s), "samples": s} for name, s in samples.items()}
    return out


# -- 4. HTTP server parsing ------------------------------------------------------------------------

_ANSWER = b'{"id":"bench","object":"chat.completion","choices":[],"usage":{"total_tokens":0}}'


async def _asgi_app(
    scope: dict[str, Any],
    receive: Callable[[], Awaitable[dict[str, Any]]],
    send: Callable[[dict[str, Any]], Awaitable[None]],
) -> None:
    """Read the request body, answer a small JSON object."""
    if scope["type"] != "http":
        return
    while (await receive()).get("more_body", False):
        pass
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"%d" % len(_ANSWER)),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _ANSWER})


def _serve(http: str) -> int:
    """The server of measurement 4: uvicorn configured as routedeck's (`engine.server`)."""
    import uvicorn

    uvicorn.run(
        _asgi_app,
        host="127.0.0.1",
        port=0,
        http=http,
        loop="uvloop",
        lifespan="off",
        access_log=False,
        server_header=False,
        timeout_keep_alive=30,
    )
    return 0


def _marker(marks: list[float], server: Service) -> Callable[[], None]:
    """A callback appending ``server``'s CPU seconds so far to ``marks``."""
    return lambda: marks.append(server.cpu_seconds())


async def _servers(servers: dict[str, Service], plan: Plan) -> dict[str, Any]:
    from bench.loadgen import RequestSpec, run_window, summarize
    from bench.services import settle

    body = json.dumps(CHAT_REQUEST).encode()
    specs = {
        name: RequestSpec("127.0.0.1", server.port, PATH, body) for name, server in servers.items()
    }
    for name in servers:  # warm-up, not recorded
        await run_window(specs[name], rate=plan.rate, duration_s=plan.server_warmup_s)
    windows: dict[str, list[dict[str, Any]]] = {name: [] for name in servers}
    for rnd in range(plan.rounds):
        for name in _rotated(list(servers), rnd):
            server = servers[name]
            await settle(list(servers.values()), minimum_s=0.0, maximum_s=3.0)
            marks: list[float] = []
            result = await run_window(
                specs[name],
                rate=plan.rate,
                duration_s=plan.seconds,
                on_start=_marker(marks, server),
                on_stop=_marker(marks, server),
            )
            cpu = marks[1] - marks[0]
            windows[name].append(
                {
                    "round": rnd,
                    "ok": result.ok,
                    "errors": result.errors,
                    "server_cpu_s": cpu,
                    "cpu_us_per_request": cpu / result.ok * 1e6 if result.ok else float("nan"),
                    "latency_ms": summarize(result.latency_ms),
                }
            )
            print(
                f"choices:   uvicorn http={name:9} round {rnd + 1}: ok {result.ok} "
                f"err {result.errors}  server CPU {cpu:.2f} s",
                file=sys.stderr,
                flush=True,
            )
    return {
        name: {
            "cpu_us_per_request": _median([w["cpu_us_per_request"] for w in ws]),
            "latency_p50_ms": _median([w["latency_ms"]["p50"] for w in ws]),
            "windows": ws,
        }
        for name, ws in windows.items()
    }


# -- report ----------------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def render(report: dict[str, Any]) -> str:
    """The tables of a report (as written to JSON by `main`)."""
    meta = report["meta"]
    lines = [
        f"routedeck library choices — {meta['date']} — {meta['nproc']} x {meta['cpu_model']}, "
        f"CPython {meta['python']}",
        f"  {meta['pinning']}; medians of {meta['plan']['reps']} samples "
        f"(JSON: {meta['plan']['json_reps']}), orders rotating",
        "  versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "",
    ]
    loop = report["event_loop"]
    plan = meta["plan"]
    lines.append(
        f"1. Event loop ({plan['calls']} sequential POSTs through providers.http1.Pool to the "
        f"simulator; {plan['echoes']} round trips of {ECHO_BYTES} B to an echo server in the "
        "same loop)"
    )
    lines.append(f"   {'workload':18} {'asyncio CPU':>12} {'uvloop CPU':>11} {'ratio':>6}"
                 f" {'asyncio wall':>13} {'uvloop wall':>12} {'ratio':>6}")  # fmt: skip
    for key, label in (("posts", "POST via Pool"), ("echo", "echo round trip")):
        a, u = loop[key]["asyncio"], loop[key]["uvloop"]
        lines.append(
            f"   {label:18} {a['cpu_us']:9.1f} µs {u['cpu_us']:8.1f} µs "
            f"{_ratio(u['cpu_us'], a['cpu_us']):6.2f} {a['wall_us']:10.1f} µs "
            f"{u['wall_us']:9.1f} µs {_ratio(u['wall_us'], a['wall_us']):6.2f}"
        )
    lines.append("   (ratio: uvloop / asyncio; CPU of this process per call)")
    lines.append("")

    clients = report["clients"]
    lines.append(
        f"2. Upstream HTTP client on uvloop ({plan['calls']} sequential POSTs after "
        f"{plan['warmup']} warm-up, CPU of the client process per call)"
    )
    base = clients["in_process"]["rows"]["routedeck Pool"]
    lines.append(f"   {'client':58} {'CPU/call':>10} {'vs Pool':>8} {'vs httpx*':>10} {'wall':>10}")
    for name, row in clients["in_process"]["rows"].items():
        lines.append(
            f"   {name:58} {row['cpu_us']:7.1f} µs {_ratio(row['cpu_us'], base['cpu_us']):8.2f} "
            f"{'':>10} {row['wall_us']:7.1f} µs"
        )
    for worker in clients["aiohttp"]:
        if "error" in worker:
            lines.append(f"   skipped under {worker['executable']}: {worker['error']}")
            continue
        control = worker["rows"]["httpx"]
        lines.append(
            f"   under {worker['executable']} (CPython {worker['python']}, {worker['loop']}, "
            f"aiohttp {worker['versions'].get('aiohttp')}, {worker['aiohttp_response_parser']}):"
        )
        for name, row in worker["rows"].items():
            lines.append(
                f"   {name:58} {row['cpu_us']:7.1f} µs "
                f"{_ratio(row['cpu_us'], base['cpu_us']):8.2f} "
                f"{_ratio(row['cpu_us'], control['cpu_us']):10.2f} {row['wall_us']:7.1f} µs"
            )
    if "aiohttp_skipped" in clients:
        lines.append(f"   httpx over aiohttp skipped: {clients['aiohttp_skipped']}")
    lines.append("   (*: against plain httpx measured in the same process)")
    lines.append("")

    js = report["json"]
    lines.append(
        f"3. JSON (loads of a {js['request_bytes']} B chat request, dumps of a "
        f"{js['response_bytes']} B chat completion; {js['ops']} ops per sample)"
    )
    for op in ("loads", "dumps"):
        ref = js[op]["orjson"]["us"]
        cells = "  ".join(
            f"{name} {row['us']:.2f} µs ({_ratio(row['us'], ref):.1f}x)"
            for name, row in js[op].items()
        )
        lines.append(f"   {op}: {cells}")
    lines.append("")

    srv = report["servers"]
    lines.append(
        f"4. uvicorn HTTP parser (trivial ASGI app, {plan['rate']:.0f} req/s for "
        f"{plan['seconds']:.0f} s, {plan['rounds']} round(s) alternating; server process CPU)"
    )
    ht = srv["httptools"]["cpu_us_per_request"]
    for name, row in srv.items():
        lines.append(
            f"   http={name:10} {row['cpu_us_per_request']:7.1f} µs/request "
            f"({_ratio(row['cpu_us_per_request'], ht):.2f}x httptools)  "
            f"latency p50 {row['latency_p50_ms']:.2f} ms"
        )
    return "\n".join(lines)


# -- main ------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bench/choices.py",
        description="Measure the library choices on routedeck's request path: event loop, "
        "upstream HTTP client, JSON, HTTP server parser.",
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run (< 30 s)")
    parser.add_argument(
        "--aiohttp-python",
        action="append",
        default=[],
        metavar="PYTHON",
        help="also measure httpx over aiohttp under this interpreter (repeatable); "
        f"{LITELLM_VENV}/bin/python is measured when it exists",
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for the JSON result")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--body", help=argparse.SUPPRESS)
    parser.add_argument("--serve", choices=("httptools", "h11"), help=argparse.SUPPRESS)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.worker:
        return _worker(args)
    if args.serve:
        return _serve(args.serve)

    from bench.run import cpu_model

    plan = QUICK if args.quick else FULL
    pythons = [str(p) for p in [LITELLM_VENV / "bin" / "python"] if p.is_file()]
    pythons += args.aiohttp_python
    cpus = sorted(os.sched_getaffinity(0))
    near: set[int] | None = None
    far: set[int] | None = None
    pinning = "not pinned (fewer than 2 CPUs)"
    if len(cpus) >= 2:
        near, far = {cpus[0]}, {cpus[1]}
        pinning = (
            f"measured client and servers on CPU {cpus[0]}, simulator and load generator "
            f"on CPU {cpus[1]}"
        )
    started, t0 = dt.datetime.now(dt.UTC), time.monotonic()
    meta: dict[str, Any] = {
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
        "command": " ".join([".venv/bin/python", "bench/choices.py", *(argv or sys.argv[1:])]),
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "executable": sys.executable,
        "versions": _versions(),
        "pinning": pinning,
        "plan": asdict(plan),
        "client_sim_profile": CLIENT_SIM_PROFILE,
        "loadavg_before": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }
    report: dict[str, Any] = {"meta": meta}
    body = _sim_body()
    with tempfile.TemporaryDirectory(prefix="routedeck-choices-") as tmp:
        workdir = Path(tmp)
        try:
            sim = launch(
                "sim",
                [sys.executable, "-m", "providers.sim", "--host", "127.0.0.1", "--port", "0",
                 "--seed", "0", "--profile", CLIENT_SIM_PROFILE],
                workdir, far, 30.0, REPO,
            )  # fmt: skip
        except ServiceError as exc:
            print(f"choices: {exc}", file=sys.stderr)
            return 1
        try:
            if near:
                os.sched_setaffinity(0, near)
            _progress(t0, "1. event loop")
            report["event_loop"] = _event_loop(sim.url, body, plan)
            _progress(t0, "2. upstream HTTP client")
            report["clients"] = _clients(sim.url, body, plan, pythons, args.quick, workdir, t0)
        finally:
            sim.stop()
        _progress(t0, "3. JSON")
        report["json"] = _json(plan)
        _progress(t0, "4. HTTP server parsing")
        servers: dict[str, Service] = {}
        try:
            for http in ("httptools", "h11"):
                servers[http] = launch(
                    f"uvicorn-{http}",
                    [sys.executable, str(SCRIPT), "--serve", http],
                    workdir,
                    near,
                    30.0,
                    REPO,
                    ready=_UVICORN_RUNNING,
                )
            if far:
                os.sched_setaffinity(0, far)
            report["servers"] = asyncio.run(_servers(servers, plan))
        except ServiceError as exc:
            print(f"choices: {exc}", file=sys.stderr)
            return 1
        finally:
            for server in servers.values():
                server.stop()
    meta["loadavg_after"] = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    meta["duration_s"] = round((dt.datetime.now(dt.UTC) - started).total_seconds(), 1)
    path = write_results(args.out, "choices", started, report, quick=args.quick)
    print(render(report))
    print(f"\nfull figures: {path} ({meta['duration_s']:.0f} s run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
