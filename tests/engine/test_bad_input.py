"""Bad input gets a clear error in the inbound API's own shape, never a 500 or a traceback."""

from __future__ import annotations

from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.engine.conftest import Proxy

OPENAI = "/v1/chat/completions"
ANTHROPIC = "/v1/messages"


def openai_error(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert set(body) == {"error"}
    error: dict[str, Any] = body["error"]
    assert {"message", "type", "param", "code"} <= set(error)
    assert r.headers["x-routedeck-request-id"].startswith("rd-")
    return error


def anthropic_error(r: httpx.Response) -> dict[str, Any]:
    body = r.json()
    assert body["type"] == "error"
    error: dict[str, Any] = body["error"]
    assert {"type", "message"} <= set(error)
    return error


async def test_malformed_json(http: httpx.AsyncClient) -> None:
    r = await http.post(
        OPENAI,
        content=b'{"model": "low", "messages": [',
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400
    error = openai_error(r)
    assert error["type"] == "invalid_request_error"
    assert "not valid JSON" in error["message"]
    r = await http.post(ANTHROPIC, content=b"not json")
    assert r.status_code == 400
    assert "not valid JSON" in anthropic_error(r)["message"]


async def test_empty_body(http: httpx.AsyncClient) -> None:
    r = await http.post(OPENAI, content=b"")
    assert r.status_code == 400
    assert "empty" in openai_error(r)["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "model"),
        ({"model": "low"}, "messages"),
        ({"model": "low", "messages": []}, "messages"),
        ({"model": "low", "messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"model": "low", "messages": "hi"}, "messages"),
    ],
)
async def test_missing_or_wrong_fields_openai(
    http: httpx.AsyncClient, body: dict[str, Any], param: str
) -> None:
    r = await http.post(OPENAI, json=body)
    assert r.status_code == 400
    error = openai_error(r)
    assert error["param"] == param
    assert error["message"]


async def test_missing_fields_anthropic(http: httpx.AsyncClient) -> None:
    r = await http.post(
        ANTHROPIC, json={"model": "low", "messages": [{"role": "user", "content": "hi"}]}
    )
    assert r.status_code == 400
    error = anthropic_error(r)
    assert error["type"] == "invalid_request_error"
    assert "max_tokens" in error["message"]


async def test_unknown_model_openai_sdk(proxy: Proxy) -> None:
    async with openai.AsyncOpenAI(base_url=proxy.url + "/v1", api_key="x", max_retries=0) as oai:
        with pytest.raises(openai.NotFoundError) as info:
            await oai.chat.completions.create(
                model="gpt-4o-minii", messages=[{"role": "user", "content": "hi"}]
            )
    message = str(info.value)
    assert "'gpt-4o-minii' is not known" in message
    assert "Did you mean 'gpt-4o-mini'?" in message


async def test_unknown_model_anthropic_sdk(proxy: Proxy) -> None:
    async with anthropic.AsyncAnthropic(base_url=proxy.url, api_key="x", max_retries=0) as client:
        with pytest.raises(anthropic.NotFoundError) as info:
            await client.messages.create(
                model="claude-opus-9", max_tokens=10, messages=[{"role": "user", "content": "hi"}]
            )
    assert info.value.body["error"]["type"] == "not_found_error"  # type: ignore[index,call-overload]


async def test_body_over_the_size_limit(tmp_path: Any) -> None:
    from tests.engine.conftest import make_config, running

    config = make_config(tmp_path, "").model_copy(
        update={"server": make_config(tmp_path).server.model_copy(update={"max_body_bytes": 2048})}
    )
    async with running(config) as p, httpx.AsyncClient(base_url=p.url) as http:
        big = {"model": "low", "messages": [{"role": "user", "content": "x" * 5000}]}
        r = await http.post(OPENAI, json=big)
        assert r.status_code == 413
        error = openai_error(r)
        assert "2048 bytes" in error["message"] and "max_body_bytes" in error["message"]
        r = await http.post(ANTHROPIC, json={**big, "max_tokens": 5})
        assert r.status_code == 413
        assert anthropic_error(r)["type"] == "request_too_large"

        async def chunks() -> Any:  # no Content-Length: the limit holds while reading
            for _ in range(10):
                yield b"x" * 1024

        r = await http.post(OPENAI, content=chunks())
        assert r.status_code == 413
        assert p.sim.stats()["total"] == 0


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"n": 3}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"audio": {"voice": "alloy"}}, "audio"),
        ({"frobnicate": 1}, "frobnicate"),
    ],
)
async def test_unsupported_parameters_openai(
    http: httpx.AsyncClient, extra: dict[str, Any], param: str
) -> None:
    r = await http.post(
        OPENAI, json={"model": "low", "messages": [{"role": "user", "content": "hi"}], **extra}
    )
    assert r.status_code == 400
    error = openai_error(r)
    assert error["param"] == param
    assert param in error["message"]


async def test_unsupported_parameter_anthropic(http: httpx.AsyncClient) -> None:
    body = {
        "model": "low",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "hi"}],
        "thinking": {"type": "enabled", "budget_tokens": 1000},
    }
    r = await http.post(ANTHROPIC, json=body)
    assert r.status_code == 400
    assert "thinking" in anthropic_error(r)["message"]


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b"null",
        b"42",
        b'"str"',
        b'{"model": 5, "messages": {}}',
        b'{"model": "low", "messages": [null]}',
        b'{"model": "low", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
        b'{"model": "low", "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}',
        b'{"model": "low", "messages": [{"role": "user", "content": "x"}], "temperature": "hot"}',
        b'{"model": "low", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}',
        b"\xff\xfe",
    ],
)
async def test_garbage_never_gets_a_500(http: httpx.AsyncClient, body: bytes) -> None:
    for path in (OPENAI, ANTHROPIC):
        r = await http.post(path, content=body)
        assert r.status_code == 400, (path, body, r.text)
        assert "Traceback" not in r.text


async def test_unknown_route_and_method(http: httpx.AsyncClient) -> None:
    r = await http.post("/v1/completions", json={})
    assert r.status_code == 404
    assert "POST /v1/chat/completions" in openai_error_no_id(r)["message"]
    r = await http.get(OPENAI)
    assert r.status_code == 405


def openai_error_no_id(r: httpx.Response) -> dict[str, Any]:
    error: dict[str, Any] = r.json()["error"]
    return error
