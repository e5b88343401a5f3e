"""Which client carries upstream calls: the lean HTTP/1.1 pool, or httpx behind a proxy."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from engine.config import parse_config
from engine.engine import Engine, _proxied
from providers.http1 import Pool

REAL = """
[state]
path = "{state}"

[providers.remote]
protocol = "openai"
base_url = "https://api.example.test/v1"

[deployments.m]
provider = "remote"
model = "m-1"

[tiers.low]
deployments = ["m"]
"""


@pytest.mark.parametrize(
    ("url", "environ", "proxied"),
    [
        ("https://api.example.test/v1", {}, False),
        ("https://api.example.test/v1", {"HTTPS_PROXY": "http://proxy:3128"}, True),
        ("https://api.example.test/v1", {"https_proxy": "http://proxy:3128"}, True),
        ("https://api.example.test/v1", {"HTTP_PROXY": "http://proxy:3128"}, False),
        ("http://api.example.test/v1", {"HTTP_PROXY": "http://proxy:3128"}, True),
        ("https://api.example.test/v1", {"ALL_PROXY": "socks5://proxy:1080"}, True),
        (
            "https://api.example.test/v1",
            {"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "example.test"},
            False,
        ),
        ("https://api.example.test/v1", {"HTTPS_PROXY": "http://p:1", "no_proxy": "*"}, False),
        ("http://127.0.0.1:9000/v1", {"HTTP_PROXY": "http://proxy:3128"}, False),
    ],
)
def test_proxy_environment_decides(url: str, environ: dict[str, str], proxied: bool) -> None:
    assert _proxied(url, environ) is proxied


@pytest.mark.parametrize(
    ("environ", "kind"), [({}, Pool), ({"HTTPS_PROXY": "http://p:1"}, httpx.AsyncClient)]
)
async def test_engine_uses_the_lean_pool_unless_a_proxy_is_set(
    tmp_path: Path, environ: dict[str, str], kind: type
) -> None:
    config = parse_config(REAL.format(state=tmp_path / "s.db"))
    async with Engine(config, environ=environ) as engine:
        adapter = engine.controller._adapters["m"]
        transport = adapter._transport  # type: ignore[attr-defined]
        client = getattr(transport, "_pool", None) or getattr(transport, "_client", None)
        assert isinstance(client, kind)
