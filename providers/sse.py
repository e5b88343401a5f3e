"""An incremental Server-Sent-Events parser for upstream streaming responses.

`aiter_sse` turns an async iterator of raw body chunks into ``(event, data)`` pairs, following
the WHATWG event-stream rules that matter to LLM APIs:

- Lines end in LF, CRLF or a lone CR, and an ending may be split across chunks (a chunk that
  ends in CR followed by one that starts with LF is a single line ending).
- A chunk boundary may fall anywhere, including inside a multi-byte UTF-8 character: lines are
  cut on bytes and decoded only when complete.
- ``data:`` lines of one event are joined with ``\\n``; one optional space after the colon is
  removed; ``event:`` names the event; comment lines (``:`` first) and ``id:``/``retry:`` and
  unknown fields are ignored.
- An event is dispatched at a blank line, and only when it has at least one ``data:`` line;
  ``event`` is ``None`` when the event had no ``event:`` field.
- When the input ends, a final event that was not terminated by a blank line is still
  dispatched: some servers omit the last blank line. A truncated event then reaches the caller
  as truncated data, which its JSON decoding rejects.

Invalid UTF-8 is replaced (U+FFFD) rather than raised, so a corrupt byte surfaces as a data
error in the caller instead of a decoding error here.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator

_BOM = b"\xef\xbb\xbf"


async def aiter_sse(
    chunks: AsyncIterator[bytes],
) -> AsyncGenerator[tuple[str | None, str], None]:
    """Yield ``(event name, data)`` for each event in the byte stream ``chunks``."""
    pending = b""
    skip_lf = False  # the previous chunk ended in CR: a leading LF completes that CRLF
    first = True
    event: str | None = None
    data: list[bytes] = []

    async for chunk in chunks:
        if not chunk:
            continue
        if first:
            first = False
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
        if skip_lf:
            skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
                if not chunk:
                    continue
        buffer = pending + chunk if pending else chunk
        # bytes.splitlines splits on exactly LF, CRLF and CR, the SSE line endings (str's would
        # also split on Unicode separators that are legal inside data).
        lines = buffer.splitlines()
        last = buffer[-1]
        if last == 0x0A:  # "\n"
            pending = b""
        elif last == 0x0D:  # "\r"
            pending = b""
            skip_lf = True
        else:
            pending = lines.pop()
        for line in lines:
            if not line:
                if data:
                    yield event, b"\n".join(data).decode("utf-8", "replace")
                    data = []
                event = None
                continue
            field = _field(line)
            if field is None:
                continue
            name, value = field
            if name == b"data":
                data.append(value)
            elif name == b"event":
                event = value.decode("utf-8", "replace")

    if pending:
        field = _field(pending)
        if field is not None:
            if field[0] == b"data":
                data.append(field[1])
            elif field[0] == b"event":
                event = field[1].decode("utf-8", "replace")
    if data:
        yield event, b"\n".join(data).decode("utf-8", "replace")


def _field(line: bytes) -> tuple[bytes, bytes] | None:
    """Split a non-empty line into (field name, value); None for a comment."""
    if line[0] == 0x3A:  # ":" starts a comment
        return None
    colon = line.find(b":")
    if colon == -1:
        return line, b""
    value = line[colon + 1 :]
    if value[:1] == b" ":
        value = value[1:]
    return line[:colon], value
