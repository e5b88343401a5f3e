"""Deterministic answers and token counts, independent of the wire protocol.

What a caller may rely on:

- **Token rule.** A token is a match of ``\\w+|[^\\w\\s]`` (a run of word characters, or one
  character that is neither a word character nor whitespace). `count_tokens` applies it to a
  string; `count_value_tokens` applies it to every object key and every string value of a JSON
  value, recursively (numbers, booleans and null count nothing). A request's input tokens are
  `count_value_tokens` of its ``messages``, ``system`` and ``tools`` fields, summed; output
  tokens are `count_tokens` of the reply text, or of the tool's name plus its JSON arguments.
- **Determinism.** The reply is a function of the server seed and the request body with the
  transport-only fields (``stream``, ``stream_options``) removed, compared as canonical JSON: the
  same request gets the same reply streaming or not, whatever the client's JSON formatting.
- **Text.** Plain-word sentences of 20 to 120 tokens (drawn from the hash); cut at ``max_tokens``
  with finish ``length`` when longer.
- **Tools.** When the request offers tools, its tool choice is not "none" and its last message is
  not a tool result, the reply is one call: of the named tool, else of the first tool, with
  arguments built by `sample_value` from the tool's JSON schema. Tool calls are never cut by
  ``max_tokens``.
- **JSON.** A JSON-schema response format gets `sample_value` of the schema; a plain JSON-object
  format gets ``{"answer": <text>}``. The JSON text, too, is cut at ``max_tokens``.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

TOKEN_PATTERN = r"\w+|[^\w\s]"
_TOKEN_RE = re.compile(TOKEN_PATTERN)

MIN_REPLY_TOKENS = 20
MAX_REPLY_TOKENS = 120

Finish = Literal["stop", "length", "tool_calls"]

# Plain words only, so that every word is exactly one token under the rule above.
_WORD_LIST = (
    "the a of to and in that it for on with as at by from this be is are was can will "
    "request route model provider answer token stream latency budget tier fallback cache "
    "system simple quick steady clear small large first next last every each other more data "
    "value result reply context window signal release canary arm gate cost price tenant "
    "quota deadline retry breaker health drain safe mode check step report note send read "
    "write keep move turn start stop run wait pass fail hold trace count local remote "
    "upstream downstream engine console operator config table panel view green amber red "
    "quiet busy warm cold fresh stale early late fast slow high low"
)
_WORDS = tuple(_WORD_LIST.split())


def count_tokens(text: str) -> int:
    """Number of tokens in ``text`` under the module's rule."""
    return len(_TOKEN_RE.findall(text))


def count_value_tokens(value: object) -> int:
    """Tokens in every object key and string value of a JSON value, recursively."""
    if isinstance(value, str):
        return len(_TOKEN_RE.findall(value))
    if isinstance(value, dict):
        return sum(len(_TOKEN_RE.findall(k)) + count_value_tokens(v) for k, v in value.items())
    if isinstance(value, list):
        return sum(count_value_tokens(v) for v in value)
    return 0


def truncate_tokens(text: str, limit: int) -> str:
    """``text`` cut right after its ``limit``-th token (unchanged when it has fewer)."""
    end = 0
    for index, match in enumerate(_TOKEN_RE.finditer(text)):
        if index == limit:
            return text[:end]
        end = match.end()
    return text


def token_pieces(text: str) -> list[tuple[str, int]]:
    """``text`` split into consecutive pieces of one token each (leading spaces attached).

    The pieces concatenate back to ``text``; each comes with its token count (1, or 0 for a
    whitespace-only text) so a stream can be paced by tokens.
    """
    pieces: list[tuple[str, int]] = []
    start = 0
    for match in _TOKEN_RE.finditer(text):
        end = match.end()
        pieces.append((text[start:end], 1))
        start = end
    if start < len(text):
        if pieces:
            last, n = pieces[-1]
            pieces[-1] = (last + text[start:], n)
        else:
            pieces.append((text[start:], 0))
    return pieces


def sample_value(schema: Mapping[str, Any], root: Mapping[str, Any] | None = None) -> Any:
    """A value for a JSON schema, built from its required properties only.

    string → "sample", integer → 1, number → 1.0, boolean → true, enum → its first value,
    const → the constant, array → [], object → an object of its required properties built the
    same way ({} when it has none). Local ``$ref``s (``#/$defs/...``) are followed; ``anyOf`` /
    ``oneOf`` take the first option that is not null.
    """
    root = schema if root is None else root
    ref = schema.get("$ref")
    if isinstance(ref, str):
        return sample_value(_resolve_ref(ref, root), root)
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf", "allOf"):
        options = schema.get(key)
        if isinstance(options, list) and options:
            usable = [o for o in options if isinstance(o, dict) and o.get("type") != "null"]
            return sample_value(usable[0] if usable else options[0], root)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    if kind == "string":
        return "sample"
    if kind == "integer":
        return 1
    if kind == "number":
        return 1.0
    if kind == "boolean":
        return True
    if kind == "array":
        return []
    if kind == "null":
        return None
    properties = schema.get("properties")
    required = schema.get("required")
    if not isinstance(properties, dict) or not isinstance(required, list):
        return {}
    return {
        name: sample_value(properties[name], root)
        for name in required
        if isinstance(name, str) and isinstance(properties.get(name), dict)
    }


def _resolve_ref(ref: str, root: Mapping[str, Any]) -> Mapping[str, Any]:
    node: Any = root
    if ref.startswith("#/"):
        for part in ref[2:].split("/"):
            node = node.get(part) if isinstance(node, dict) else None
    return node if isinstance(node, dict) else {}


@dataclass(frozen=True, slots=True)
class Tool:
    """A tool offered by the request: its name and JSON schema of arguments."""

    name: str
    schema: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class Prompt:
    """What the simulator needs from a request, whichever protocol it came in.

    ``tool_choice`` is ``"none"``, ``"auto"`` or the name of a forced tool (``"required"`` /
    ``"any"`` are mapped to ``"auto"``, since the simulator always calls a tool when it may).
    ``json_schema`` is set for a JSON-schema response format, ``json_object`` for a plain JSON
    one. ``digest`` is the hash of the seed and the canonical body.
    """

    model: str
    input_tokens: int
    digest: bytes
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    tools: tuple[Tool, ...] = ()
    tool_choice: str = "auto"
    after_tool_result: bool = False
    json_object: bool = False
    json_schema: Mapping[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One call of a tool; ``arguments`` is the compact JSON text of ``input``."""

    id: str
    name: str
    input: Mapping[str, Any]
    arguments: str


@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to a `Prompt`: text or one tool call, with its finish reason and usage."""

    id: str
    text: str
    tool_call: ToolCall | None
    finish: Finish
    input_tokens: int
    output_tokens: int


_TRANSPORT_KEYS = frozenset({"stream", "stream_options"})


def request_digest(body: Mapping[str, Any], seed: int) -> bytes:
    """Hash of the seed and the body without its transport-only fields, as canonical JSON."""
    canonical = orjson.dumps(
        {k: v for k, v in body.items() if k not in _TRANSPORT_KEYS},
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.blake2b(b"%d\n%s" % (seed, canonical), digest_size=16).digest()


def compose(prompt: Prompt) -> Reply:
    """The deterministic reply to ``prompt`` (see the module docstring for the rules)."""
    reply_id = prompt.digest.hex()[:24]
    tool = _tool_to_call(prompt)
    if tool is not None:
        arguments = sample_value(tool.schema)
        text = orjson.dumps(arguments).decode()
        call = ToolCall(id=reply_id, name=tool.name, input=arguments, arguments=text)
        return Reply(
            id=reply_id,
            text="",
            tool_call=call,
            finish="tool_calls",
            input_tokens=prompt.input_tokens,
            output_tokens=count_tokens(tool.name) + count_tokens(text),
        )
    rng = random.Random(prompt.digest)
    n = rng.randint(MIN_REPLY_TOKENS, MAX_REPLY_TOKENS)
    if prompt.json_schema is not None:
        text = orjson.dumps(sample_value(prompt.json_schema)).decode()
    elif prompt.json_object:
        text = orjson.dumps({"answer": _sentences(rng, n)}).decode()
    else:
        text = _sentences(rng, n)
    tokens = count_tokens(text)
    finish: Finish = "stop"
    if prompt.max_tokens is not None and tokens > prompt.max_tokens:
        text = truncate_tokens(text, prompt.max_tokens)
        tokens = prompt.max_tokens
        finish = "length"
    return Reply(
        id=reply_id,
        text=text,
        tool_call=None,
        finish=finish,
        input_tokens=prompt.input_tokens,
        output_tokens=tokens,
    )


def _tool_to_call(prompt: Prompt) -> Tool | None:
    if not prompt.tools or prompt.tool_choice == "none" or prompt.after_tool_result:
        return None
    if prompt.tool_choice != "auto":
        for tool in prompt.tools:
            if tool.name == prompt.tool_choice:
                return tool
    return prompt.tools[0]


def _sentences(rng: random.Random, n: int) -> str:
    """Exactly ``n`` tokens of sentences: words, the odd comma, a full stop at each end."""
    parts: list[str] = []
    remaining = n
    while remaining > 0:
        k = min(rng.randint(6, 14), remaining)
        if remaining - k < 3:
            k = remaining  # no stub sentence at the end
        words = rng.choices(_WORDS, k=k - 1)
        if words:
            words[0] = words[0].capitalize()
        if k >= 8 and rng.random() < 0.4:
            words[rng.randint(2, k - 4)] = ","
        sentence = " ".join(words).replace(" ,", ",") + "."
        parts.append(sentence)
        remaining -= k
    return " ".join(parts)
