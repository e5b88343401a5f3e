"""The deterministic response cache, on a real state file: keys, decisions, storage, replay."""

from __future__ import annotations

import asyncio
import dataclasses
import random
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

from engine.cache import CacheDecision, ResponseCache, replay
from engine.config import CacheConfig
from providers.canonical import (
    ChatRequest,
    ChatResponse,
    ImagePart,
    Message,
    StreamEnd,
    StreamEvent,
    TextDelta,
    TextPart,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    Usage,
)
from state.store import Store

T0 = 1_700_000_000.0

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"enum": ["c", "f"]}},
    "required": ["city"],
}

BASE = ChatRequest(
    model="fast",
    messages=(
        Message("system", (TextPart("Be brief."),)),
        Message("user", (TextPart("Weather in Paris?"), ImagePart("https://example.com/a.png"))),
        Message("assistant", tool_calls=(ToolCall("call_1", "weather", '{"city": "Paris"}'),)),
        Message("tool", (TextPart("18C"),), tool_call_id="call_1"),
    ),
    max_tokens=100,
    temperature=0.0,
    top_p=1.0,
    stop=("END",),
    seed=7,
    presence_penalty=0.0,
    frequency_penalty=0.0,
    tools=(Tool("weather", "Look up the weather", WEATHER_SCHEMA),),
    tool_choice=ToolChoice("auto"),
    parallel_tool_calls=True,
    response_format={"type": "json_object"},
)

ANSWER = ChatResponse(
    text="Let me check both cities.",
    tool_calls=(
        ToolCall("call_a", "weather", '{"city": "Paris", "unit": "c"}'),
        ToolCall("call_b", "weather", '{"city": "Lyon"}'),
    ),
    finish_reason="tool_calls",
    usage=Usage(input_tokens=120, output_tokens=31),
    model="gpt-test-1",
)


class Clock:
    """Unix time the test moves by hand."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with Store(tmp_path / "state.db", flush_interval=0.001) as s:
        yield s


def make_cache(store: Store, clock: Clock, **config: Any) -> ResponseCache:
    return ResponseCache(CacheConfig(**config), store, clock=clock)


def key_of(request: ChatRequest, tenant: str = "acme", target: str = "tier:low") -> str:
    return ResponseCache.key(request, tenant=tenant, target=target)


def with_message(index: int, **changes: Any) -> Callable[[ChatRequest], ChatRequest]:
    def change(request: ChatRequest) -> ChatRequest:
        messages = list(request.messages)
        messages[index] = dataclasses.replace(messages[index], **changes)
        return dataclasses.replace(request, messages=tuple(messages))

    return change


def with_fields(**changes: Any) -> Callable[[ChatRequest], ChatRequest]:
    return lambda request: dataclasses.replace(request, **changes)


def text_answer(text: str) -> ChatResponse:
    return ChatResponse(text=text, usage=Usage(10, 20), model="m")


async def table(store: Store) -> dict[str, tuple[int, int]]:
    """The cache table as {key: (size, hits)}."""
    rows = await store.query("SELECT key, size, hits FROM cache")
    return {row["key"]: (row["size"], row["hits"]) for row in rows}


async def assert_stats_match_table(cache: ResponseCache, store: Store) -> None:
    rows = await table(store)
    stats = cache.stats()
    assert (stats.entries, stats.bytes) == (len(rows), sum(size for size, _ in rows.values()))


# -- the key ---------------------------------------------------------------------------------

OUTPUT_CHANGES: dict[str, Callable[[ChatRequest], ChatRequest]] = {
    "message role": with_message(0, role="user"),
    "message text": with_message(1, content=(TextPart("Weather in Rome?"),)),
    "image url": with_message(
        1, content=(TextPart("Weather in Paris?"), ImagePart("https://example.com/b.png"))
    ),
    "part order": with_message(
        1, content=(ImagePart("https://example.com/a.png"), TextPart("Weather in Paris?"))
    ),
    "tool call arguments": with_message(
        2, tool_calls=(ToolCall("call_1", "weather", '{"city": "Rome"}'),)
    ),
    "tool call id": with_message(
        2, tool_calls=(ToolCall("call_2", "weather", '{"city": "Paris"}'),)
    ),
    "tool call name": with_message(
        2, tool_calls=(ToolCall("call_1", "forecast", '{"city": "Paris"}'),)
    ),
    "tool_call_id": with_message(3, tool_call_id="call_9"),
    "tool result is_error": with_message(3, is_error=True),
    "message name": with_message(1, name="alice"),
    "one more message": lambda r: dataclasses.replace(
        r, messages=(*r.messages, Message("user", (TextPart("And tomorrow?"),)))
    ),
    "tool description": with_fields(tools=(Tool("weather", "Weather now", WEATHER_SCHEMA),)),
    "tool parameters": with_fields(
        tools=(Tool("weather", "Look up the weather", {**WEATHER_SCHEMA, "required": []}),)
    ),
    "no tools": with_fields(tools=()),
    "tool_choice none": with_fields(tool_choice=ToolChoice("none")),
    "tool_choice named": with_fields(tool_choice=ToolChoice("tool", "weather")),
    "tool_choice unset": with_fields(tool_choice=None),
    "response_format": with_fields(response_format={"type": "json_schema", "json_schema": {}}),
    "response_format unset": with_fields(response_format=None),
    "temperature": with_fields(temperature=0.2),
    "temperature unset": with_fields(temperature=None),
    "top_p": with_fields(top_p=0.9),
    "max_tokens": with_fields(max_tokens=101),
    "max_tokens unset": with_fields(max_tokens=None),
    "stop": with_fields(stop=("STOP",)),
    "no stop": with_fields(stop=()),
    "seed": with_fields(seed=8),
    "seed unset": with_fields(seed=None),
    "presence_penalty": with_fields(presence_penalty=0.5),
    "frequency_penalty": with_fields(frequency_penalty=0.5),
    "parallel_tool_calls": with_fields(parallel_tool_calls=False),
    "parallel_tool_calls unset": with_fields(parallel_tool_calls=None),
}


@pytest.mark.parametrize("change", OUTPUT_CHANGES.values(), ids=OUTPUT_CHANGES.keys())
def test_key_differs_for_every_field_that_affects_the_output(
    change: Callable[[ChatRequest], ChatRequest],
) -> None:
    assert key_of(change(BASE)) != key_of(BASE)


def test_keys_of_all_output_changes_are_distinct() -> None:
    keys = {key_of(BASE)} | {key_of(change(BASE)) for change in OUTPUT_CHANGES.values()}
    assert len(keys) == len(OUTPUT_CHANGES) + 1


def test_key_is_namespaced_by_tenant_and_target() -> None:
    base = key_of(BASE, tenant="acme", target="tier:low")
    assert key_of(BASE, tenant="globex", target="tier:low") != base
    assert key_of(BASE, tenant="acme", target="tier:high") != base
    assert key_of(BASE, tenant="acme", target="deployment:a-mini") != base
    assert re.fullmatch(r"[0-9a-f]{64}", base)


SAME_ANSWER: dict[str, Callable[[ChatRequest], ChatRequest]] = {
    "stream": with_fields(stream=True),
    "include_usage": with_fields(stream=True, include_usage=True),
    "user": with_fields(user="alice"),
    "metadata": with_fields(metadata={"trace": "abc"}),
    "model alias": with_fields(model="another-alias-of-the-tier"),
    "integer temperature": with_fields(temperature=0),
    "negative zero penalty": with_fields(presence_penalty=-0.0),
    "schema key order": with_fields(
        tools=(
            Tool(
                "weather",
                "Look up the weather",
                {
                    "required": ["city"],
                    "properties": {"unit": {"enum": ["c", "f"]}, "city": {"type": "string"}},
                    "type": "object",
                },
            ),
        )
    ),
    "read-only schema mapping": with_fields(
        tools=(Tool("weather", "Look up the weather", MappingProxyType(WEATHER_SCHEMA)),)
    ),
}


@pytest.mark.parametrize("change", SAME_ANSWER.values(), ids=SAME_ANSWER.keys())
def test_key_ignores_what_does_not_change_the_answer(
    change: Callable[[ChatRequest], ChatRequest],
) -> None:
    assert key_of(change(BASE)) == key_of(BASE)


def test_key_ignores_the_order_of_object_keys() -> None:
    one = dataclasses.replace(BASE, response_format={"type": "json_object", "strict": True})
    other = dataclasses.replace(BASE, response_format={"strict": True, "type": "json_object"})
    assert key_of(one) == key_of(other)


def test_key_is_stable_across_calls_and_instances(store: Store, clock: Clock) -> None:
    first = ResponseCache.key(BASE, tenant="acme", target="tier:low")
    again = make_cache(store, clock).key(
        dataclasses.replace(BASE), tenant="acme", target="tier:low"
    )
    assert first == again


# -- decisions -------------------------------------------------------------------------------

LOOKUP = (True, True, "miss")
REFRESH = (False, True, "refresh")
BYPASS = (False, False, "bypass")


@pytest.mark.parametrize(
    ("enabled", "mode", "header", "temperature", "seed", "expected"),
    [
        (True, "deterministic", None, 0.0, None, LOOKUP),
        (True, "deterministic", None, 0, None, LOOKUP),
        (True, "deterministic", None, 0.7, 42, LOOKUP),
        (True, "deterministic", None, None, 0, LOOKUP),
        (True, "deterministic", None, 0.7, None, BYPASS),
        (True, "deterministic", None, None, None, BYPASS),
        (True, "deterministic", "on", 0.7, None, LOOKUP),
        (True, "deterministic", "off", 0.0, 1, BYPASS),
        (True, "deterministic", "refresh", 0.0, None, REFRESH),
        (True, "deterministic", "refresh", 0.7, None, REFRESH),
        (True, "deterministic", " ON ", 0.7, None, LOOKUP),
        (True, "opt_in", None, 0.0, 1, BYPASS),
        (True, "opt_in", "on", 0.7, None, LOOKUP),
        (True, "opt_in", "off", 0.0, None, BYPASS),
        (True, "opt_in", "refresh", 0.7, None, REFRESH),
        (False, "deterministic", None, 0.0, 1, BYPASS),
        (False, "deterministic", "on", 0.0, None, BYPASS),
        (False, "opt_in", "refresh", 0.0, None, BYPASS),
    ],
)
def test_decide(
    store: Store,
    clock: Clock,
    enabled: bool,
    mode: str,
    header: str | None,
    temperature: float | None,
    seed: int | None,
    expected: tuple[bool, bool, str],
) -> None:
    cache = make_cache(store, clock, enabled=enabled, mode=mode)
    request = dataclasses.replace(BASE, temperature=temperature, seed=seed)
    decision = cache.decide(request, header)
    assert isinstance(decision, CacheDecision)
    assert (decision.lookup, decision.store, decision.status) == expected
    assert decision.reason


def test_streaming_requests_with_tools_are_cacheable(store: Store, clock: Clock) -> None:
    request = dataclasses.replace(BASE, stream=True, include_usage=True, seed=None)
    assert make_cache(store, clock).decide(request, None).lookup


@pytest.mark.parametrize("enabled", [True, False])
@pytest.mark.parametrize("header", ["yes", "", "on,refresh", "true"])
def test_bad_header_raises_with_the_allowed_values(
    store: Store, clock: Clock, header: str, enabled: bool
) -> None:
    cache = make_cache(store, clock, enabled=enabled)
    with pytest.raises(ValueError, match="x-routedeck-cache") as caught:
        cache.decide(BASE, header)
    message = str(caught.value)
    assert "on, off, refresh" in message
    assert repr(header) in message


# -- storage ---------------------------------------------------------------------------------


async def test_round_trip_of_an_answer_with_tool_calls(store: Store, clock: Clock) -> None:
    cache = make_cache(store, clock)
    await cache.open()
    key = key_of(BASE)
    await cache.put(key, tenant="acme", response=ANSWER, cost_usd=0.0125)

    clock.now += 5
    got = await cache.get(key)

    assert got is not None
    assert got.response == ANSWER
    assert got.cost_usd == 0.0125
    assert got.created_at == T0
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.saved_usd, stats.unpriced_hits) == (1, 0, 0.0125, 0)
    assert stats.entries == 1
    assert stats.hit_ratio == 1.0
    await assert_stats_match_table(cache, store)


async def test_absent_key_is_a_miss(store: Store, clock: Clock) -> None:
    cache = make_cache(store, clock)
    assert cache.stats().hit_ratio is None
    assert await cache.get(key_of(BASE)) is None
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.hit_ratio) == (0, 1, 0.0)


async def test_an_entry_never_serves_another_tenant(store: Store, clock: Clock) -> None:
    cache = make_cache(store, clock)
    await cache.put(key_of(BASE, tenant="acme"), tenant="acme", response=ANSWER, cost_usd=0.01)
    assert await cache.get(key_of(BASE, tenant="globex")) is None
    assert await cache.get(key_of(BASE, tenant="acme")) is not None


async def test_unpriced_hits_are_counted_apart_from_savings(store: Store, clock: Clock) -> None:
    cache = make_cache(store, clock)
    await cache.put("k", tenant="acme", response=ANSWER, cost_usd=None)
    got = await cache.get("k")
    assert got is not None
    assert got.cost_usd is None
    stats = cache.stats()
    assert (stats.hits, stats.saved_usd, stats.unpriced_hits) == (1, 0.0, 1)


async def test_entries_and_hits_survive_a_restart(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "state.db"
    async with Store(path) as store, make_cache(store, clock) as cache:
        await cache.put("k", tenant="acme", response=ANSWER, cost_usd=0.02)
        await cache.put("j", tenant="acme", response=text_answer("hello"), cost_usd=0.01)
        assert await cache.get("k") is not None
        assert await cache.get("k") is not None
        size = cache.stats().bytes

    async with Store(path) as store, make_cache(store, clock) as cache:
        assert (cache.stats().entries, cache.stats().bytes) == (2, size)
        assert (await table(store))["k"][1] == 2  # hits written on close
        got = await cache.get("k")
        assert got is not None
        assert got.response == ANSWER


async def test_hits_are_written_with_the_next_put_or_purge(store: Store, clock: Clock) -> None:
    cache = make_cache(store, clock)
    await cache.put("k", tenant="acme", response=ANSWER, cost_usd=0.02)
    await cache.get("k")
    await cache.put("other", tenant="acme", response=ANSWER, cost_usd=0.02)
    assert (await table(store))["k"][1] == 1
    await cache.get("k")
    await cache.get("k")
    await cache.purge_expired()
    assert (await table(store))["k"][1] == 3


async def test_expired_entries_are_not_served_and_are_purged(store: Store, clock: Clock) -> None:
    cache = make_cache(store, clock, ttl_s=60)
    await cache.put("old", tenant="acme", response=ANSWER, cost_usd=0.01)
    clock.now += 30
    await cache.put("new", tenant="acme", response=text_answer("fresh"), cost_usd=0.01)

    clock.now = T0 + 59.9
    assert await cache.get("old") is not None
    clock.now = T0 + 60
    assert await cache.get("old") is None
    assert await cache.get("new") is not None

    assert await cache.purge_expired() == 1
    assert set(await table(store)) == {"new"}
    assert cache.stats().entries == 1
    await assert_stats_match_table(cache, store)


async def test_put_drops_expired_entries(store: Store, clock: Clock) -> None:
    cache = make_cache(store, clock, ttl_s=10)
    await cache.put("a", tenant="acme", response=ANSWER, cost_usd=0.01)
    await cache.put("b", tenant="acme", response=ANSWER, cost_usd=0.01)
    clock.now += 20
    await cache.put("c", tenant="acme", response=ANSWER, cost_usd=0.01)
    assert set(await table(store)) == {"c"}
    await assert_stats_match_table(cache, store)


async def test_eviction_by_entries_drops_the_oldest(store: Store, clock: Clock) -> None:
    cache = make_cache(store, clock, max_entries=3)
    for name in ("k0", "k1", "k2", "k3"):
        await cache.put(name, tenant="acme", response=ANSWER, cost_usd=0.01)
        clock.now += 1
    assert set(await table(store)) == {"k1", "k2", "k3"}
    # Eviction is by age, not by use: a hit does not keep k1.
    assert await cache.get("k1") is not None
    await cache.put("k4", tenant="acme", response=ANSWER, cost_usd=0.01)
    assert set(await table(store)) == {"k2", "k3", "k4"}
    assert cache.stats().entries == 3
    await assert_stats_match_table(cache, store)


async def test_eviction_by_bytes_drops_as_many_as_needed(store: Store, clock: Clock) -> None:
    cache = make_cache(store, clock, max_bytes=1024)
    for name in ("a", "b"):
        await cache.put(name, tenant="acme", response=text_answer("x" * 300), cost_usd=0.01)
        clock.now += 1
    rows = await table(store)
    assert set(rows) == {"a", "b"}
    size = rows["a"][0]
    assert 2 * size <= 1024 < 3 * size  # room for two of these, not three

    await cache.put("c", tenant="acme", response=text_answer("y" * 300), cost_usd=0.01)
    assert set(await table(store)) == {"b", "c"}
    clock.now += 1
    big = text_answer("z" * 850)  # fits alone, but not beside either of the others
    await cache.put("big", tenant="acme", response=big, cost_usd=0.01)
    assert set(await table(store)) == {"big"}
    assert cache.stats().bytes <= 1024
    await assert_stats_match_table(cache, store)


async def test_an_answer_over_max_bytes_is_not_stored(store: Store, clock: Clock) -> None:
    cache = make_cache(store, clock, max_bytes=1024)
    await cache.put("small", tenant="acme", response=ANSWER, cost_usd=0.01)
    await cache.put("huge", tenant="acme", response=text_answer("x" * 2000), cost_usd=0.01)
    assert set(await table(store)) == {"small"}
    assert await cache.get("huge") is None


async def test_refresh_stores_without_looking_up(store: Store, clock: Clock) -> None:
    cache = make_cache(store, clock)
    key = key_of(BASE)
    await cache.put(key, tenant="acme", response=text_answer("stale"), cost_usd=0.01)
    assert await cache.get(key) is not None

    decision = cache.decide(BASE, "refresh")
    assert (decision.lookup, decision.store, decision.status) == (False, True, "refresh")
    before = cache.stats()
    clock.now += 5
    # The engine calls the upstream instead of get(), then stores the fresh answer.
    await cache.put(key, tenant="acme", response=text_answer("fresh"), cost_usd=0.03)
    after = cache.stats()
    assert (after.hits, after.misses) == (before.hits, before.misses)
    assert after.entries == 1
    assert (await table(store))[key][1] == 0  # a replaced entry starts again at zero hits

    got = await cache.get(key)
    assert got is not None
    assert (got.response.text, got.cost_usd, got.created_at) == ("fresh", 0.03, T0 + 5)
    await assert_stats_match_table(cache, store)


async def test_unreadable_entry_is_a_miss(store: Store, clock: Clock) -> None:
    cache = make_cache(store, clock)
    await store.write(
        "INSERT INTO cache (key, tenant, created_at, expires_at, size, response) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        ("bad", "acme", T0, T0 + 100, 8, b"not json"),
    )
    assert await cache.get("bad") is None
    assert cache.stats().misses == 1


async def test_counts_stay_exact_under_concurrent_puts(store: Store, clock: Clock) -> None:
    cache = make_cache(store, clock, max_entries=5, max_bytes=4096)
    await cache.open()
    rng = random.Random(3)
    answers = [text_answer("w" * rng.randrange(10, 600)) for _ in range(40)]
    await asyncio.gather(
        *(
            cache.put(f"k{rng.randrange(12)}", tenant="acme", response=a, cost_usd=0.01)
            for a in answers
        )
    )
    stats = cache.stats()
    assert stats.entries <= 5
    assert stats.bytes <= 4096
    await assert_stats_match_table(cache, store)


# -- replay ----------------------------------------------------------------------------------


def assemble(events: list[StreamEvent]) -> ChatResponse:
    """Rebuild a response from a stream the way a client does, checking the stream's shape."""
    assert sum(isinstance(e, StreamEnd) for e in events) == 1
    end = events[-1]
    assert isinstance(end, StreamEnd)
    text = ""
    calls: dict[int, list[str]] = {}
    for event in events[:-1]:
        if isinstance(event, TextDelta):
            text += event.text
        elif isinstance(event, ToolCallDelta):
            if event.index not in calls:
                assert event.id is not None and event.name is not None
                calls[event.index] = [event.id, event.name, event.arguments]
            else:
                assert event.id is None and event.name is None
                calls[event.index][2] += event.arguments
    assert list(calls) == list(range(len(calls)))
    return ChatResponse(
        text=text,
        tool_calls=tuple(ToolCall(*calls[i]) for i in sorted(calls)),
        finish_reason=end.finish_reason,
        usage=end.usage or Usage(),
        model=ANSWER.model,
    )


@pytest.mark.parametrize(
    "response",
    [
        ANSWER,
        dataclasses.replace(
            ANSWER,
            text="A longer answer. " * 20,
            tool_calls=(ToolCall("call_x", "search", '{"q": "' + "long query " * 30 + '"}'),),
        ),
        ChatResponse(
            text="Just text.", finish_reason="length", usage=Usage(5, 3), model="gpt-test-1"
        ),
        ChatResponse(
            text="", tool_calls=ANSWER.tool_calls, finish_reason="tool_calls", model="gpt-test-1"
        ),
    ],
    ids=["text and tools", "long", "text only", "tools only"],
)
def test_replay_reassembles_to_the_same_answer(response: ChatResponse) -> None:
    events = replay(response)
    assert assemble(events) == response
    assert all(e.text for e in events if isinstance(e, TextDelta))


def test_replay_sends_long_text_in_several_chunks() -> None:
    events = replay(text_answer("word " * 100))
    assert sum(isinstance(e, TextDelta) for e in events) > 1
    assert isinstance(events[0], TextDelta)


async def test_a_cached_answer_replays_as_a_stream(store: Store, clock: Clock) -> None:
    cache = make_cache(store, clock)
    await cache.put("k", tenant="acme", response=ANSWER, cost_usd=0.01)
    got = await cache.get("k")
    assert got is not None
    assert assemble(replay(got.response)) == ANSWER


async def test_eviction_reads_in_batches_past_expired_rows(
    store: Store, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Tiny batches, so one put pages through several of them and past rows already dropped.
    monkeypatch.setattr("engine.cache._EVICT_BATCH", 2)
    monkeypatch.setattr("engine.cache._EXPIRED_PER_PUT", 1)
    cache = make_cache(store, clock, ttl_s=25, max_entries=8)
    for i in range(8):
        await cache.put(f"k{i}", tenant="acme", response=ANSWER, cost_usd=0.01)
        clock.now += 10
    # Now k0..k5 have expired; the put drops one of them as expired, the others as oldest.
    cache = make_cache(store, clock, ttl_s=25, max_entries=3)
    await cache.open()
    await cache.put("new", tenant="acme", response=ANSWER, cost_usd=0.01)
    assert set(await table(store)) == {"k6", "k7", "new"}
    await assert_stats_match_table(cache, store)
