"""The incremental SSE parser: line endings, fields, dispatch rules and chunk boundaries."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

import pytest

from providers.sse import aiter_sse


async def _chunks(parts: Iterable[bytes]) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def parse(*parts: bytes) -> list[tuple[str | None, str]]:
    return [item async for item in aiter_sse(_chunks(parts))]


# A stream exercising every rule at once; the expected events are below.
STREAM = (
    b": keep-alive comment\n"
    b"event: message_start\n"
    b'data: {"type":"message_start"}\n'
    b"\n"
    b'data: {"a":\r\n'
    b"data: 1}\r\n"
    b"id: 7\r\n"
    b"retry: 1000\r\n"
    b"\r\n"
    b"event: ping\r"
    b"data:no-space\r"
    b"\r"
    b"data: caf\xc3\xa9 \xe2\x82\xac\n"
    b"\n"
    b"data: [DONE]\n\n"
)
EXPECTED = [
    ("message_start", '{"type":"message_start"}'),
    (None, '{"a":\n1}'),
    ("ping", "no-space"),
    (None, "café €"),
    (None, "[DONE]"),
]


async def test_parses_a_whole_stream() -> None:
    assert await parse(STREAM) == EXPECTED


async def test_one_byte_at_a_time_gives_the_same_events() -> None:
    assert await parse(*(STREAM[i : i + 1] for i in range(len(STREAM)))) == EXPECTED


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
async def test_any_single_split_gives_the_same_events(cut: int) -> None:
    assert await parse(STREAM[:cut], STREAM[cut:]) == EXPECTED


async def test_crlf_split_across_chunks_is_one_line_ending() -> None:
    # Were the LF read as a second (blank) line, "a" would be dispatched on its own.
    assert await parse(b"data: a\r", b"\ndata: b\r\n\r\n") == [(None, "a\nb")]


async def test_a_lone_cr_ends_a_line() -> None:
    assert await parse(b"data: a\rdata: b\r\r") == [(None, "a\nb")]


async def test_multibyte_character_split_across_chunks() -> None:
    data = "data: 日本\n\n".encode()
    assert await parse(data[:7], data[7:9], data[9:]) == [(None, "日本")]


async def test_only_one_space_after_the_colon_is_removed() -> None:
    assert await parse(b"data:  two\n\n") == [(None, " two")]


async def test_data_field_without_colon_is_an_empty_line_of_data() -> None:
    assert await parse(b"data\n\n", b"data\ndata: x\n\n") == [(None, ""), (None, "\nx")]


async def test_event_without_data_is_not_dispatched_and_its_name_is_reset() -> None:
    assert await parse(b"event: lonely\n\ndata: next\n\n") == [(None, "next")]


async def test_event_name_does_not_leak_into_the_next_event() -> None:
    assert await parse(b"event: a\ndata: 1\n\ndata: 2\n\n") == [("a", "1"), (None, "2")]


async def test_comments_and_unknown_fields_are_ignored() -> None:
    assert await parse(b":c\nfoo: bar\nid: 1\ndata: x\n: another\n\n") == [(None, "x")]


async def test_final_event_without_blank_line_is_still_dispatched() -> None:
    assert await parse(b"data: a\n\nevent: last\ndata: [DONE]") == [
        (None, "a"),
        ("last", "[DONE]"),
    ]


async def test_byte_order_mark_is_skipped() -> None:
    assert await parse(b"\xef\xbb\xbfdata: x\n\n") == [(None, "x")]


async def test_empty_chunks_are_harmless() -> None:
    assert await parse(b"", b"data: x\n", b"", b"\n", b"") == [(None, "x")]


async def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert await parse(b"data: \xff\n\n") == [(None, "\ufffd")]
