"""Synthetic traffic for the demo: a realistic mix sent through the proxy's own HTTP port.

`TrafficGenerator` sends requests over real HTTP to a running proxy, so everything the console
shows comes from the real request path. The mix: task types from cheap (classification,
rewrites) to expensive (long reasoning), both inbound APIs, streaming and not, several tenants'
keys, and now and then a tool call. Some requests name a tier through an alias, others send
``model: "auto"`` with their task type and let routedeck choose. Arrivals are Poisson at
``rate`` per second, with at most ``max_in_flight`` requests outstanding, so a hung provider
cannot pile up unbounded work.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx


@dataclass(frozen=True, slots=True)
class TaskType:
    name: str
    model: str
    weight: float
    prompt: str
    max_tokens: int


DEMO_TASKS: tuple[TaskType, ...] = (
    TaskType(
        "classification",
        "gpt-4o-mini",
        30,
        "Classify this ticket as billing, bug or other: {n}",
        16,
    ),
    TaskType("rewrite", "auto", 20, "Rewrite politely: the report {n} is late again.", 80),
    TaskType(
        "extraction", "auto", 20, "Extract the invoice number and total from: INV-{n} ...", 120
    ),
    TaskType("rag_answer", "claude-sonnet", 15, "Using the context, answer question {n}.", 200),
    TaskType("reasoning", "o3", 5, "Plan the migration of service {n} step by step.", 400),
)
DEMO_TENANTS: tuple[str, ...] = ("acme", "globex", "initech")
_USERS = 300


@dataclass(slots=True)
class TrafficStats:
    sent: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    """Arrivals dropped because ``max_in_flight`` requests were already outstanding."""


class TrafficGenerator:
    def __init__(
        self,
        url: str,
        *,
        rate: float = 6.0,
        tasks: Sequence[TaskType] = DEMO_TASKS,
        tenants: Sequence[str] = DEMO_TENANTS,
        stream_share: float = 0.3,
        anthropic_share: float = 0.3,
        max_in_flight: int = 64,
        seed: int | None = None,
    ) -> None:
        self._url = url.rstrip("/")
        self.rate = rate
        self._tasks = tuple(tasks)
        self._tenants = tuple(tenants)
        self._stream_share = stream_share
        self._anthropic_share = anthropic_share
        self._max_in_flight = max_in_flight
        self._rng = random.Random(seed)
        self.stats = TrafficStats()
        self._task: asyncio.Task[None] | None = None
        self._in_flight: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> TrafficGenerator:
        self._task = asyncio.create_task(self._run(), name="routedeck-demo-traffic")
        return self

    async def __aexit__(self, *exc: object) -> None:
        tasks = [t for t in (self._task, *self._in_flight) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _request(self, n: int) -> tuple[str, Mapping[str, str], dict[str, Any]]:
        rng = self._rng
        task = rng.choices(self._tasks, weights=[t.weight for t in self._tasks])[0]
        tenant = rng.choice(self._tenants)
        stream = rng.random() < self._stream_share
        headers = {
            "x-routedeck-task": task.name,
            "authorization": f"Bearer demo-{tenant}",
            # End users, so that a rollout keeps each on one arm as it would in production.
            "x-routedeck-user": f"{tenant}-user-{rng.randrange(_USERS)}",
        }
        # Classifications repeat (a small set of tickets) at temperature 0, so the cache answers
        # some of them, as it would in production.
        deterministic = task.name == "classification"
        number = n % 25 if deterministic else n
        messages = [{"role": "user", "content": task.prompt.format(n=number)}]
        if rng.random() < self._anthropic_share:
            body: dict[str, Any] = {
                "model": task.model,
                "max_tokens": task.max_tokens,
                "messages": messages,
                "stream": stream,
            }
            if deterministic:
                body["temperature"] = 0
            return "/v1/messages", headers, body
        body = {"model": task.model, "max_tokens": task.max_tokens, "messages": messages}
        if deterministic:
            body["temperature"] = 0
        if stream:
            body["stream"] = True
            body["stream_options"] = {"include_usage": True}
        if task.name == "extraction" and rng.random() < 0.3:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {
                        "name": "save_invoice",
                        "parameters": {
                            "type": "object",
                            "properties": {
                                "number": {"type": "string"},
                                "total": {"type": "number"},
                            },
                            "required": ["number", "total"],
                        },
                    },
                }
            ]
        return "/v1/chat/completions", headers, body

    async def _send(self, client: httpx.AsyncClient, n: int) -> None:
        path, headers, body = self._request(n)
        self.stats.sent += 1
        try:
            async with client.stream("POST", path, json=body, headers=headers) as response:
                async for _ in response.aiter_bytes():
                    pass
            ok = response.status_code == 200
        except httpx.HTTPError:
            ok = False
        if ok:
            self.stats.ok += 1
        else:
            self.stats.failed += 1

    async def _run(self) -> None:
        limits = httpx.Limits(max_connections=self._max_in_flight)
        async with httpx.AsyncClient(base_url=self._url, timeout=120, limits=limits) as client:
            n = 0
            while True:
                await asyncio.sleep(self._rng.expovariate(self.rate) if self.rate > 0 else 1.0)
                if self.rate <= 0:
                    continue
                if len(self._in_flight) >= self._max_in_flight:
                    self.stats.skipped += 1
                    continue
                n += 1
                task = asyncio.create_task(self._send(client, n))
                self._in_flight.add(task)
                task.add_done_callback(self._in_flight.discard)
