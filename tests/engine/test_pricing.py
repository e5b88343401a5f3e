"""Prices: config overrides, genai-prices' bundled data, unpriced deployments; no network."""

from __future__ import annotations

import re
import socket
from datetime import UTC, datetime
from typing import Any

import pytest
from genai_prices import Usage as GenaiUsage
from genai_prices import calc_price

from engine.config import Config, parse_config
from engine.pricing import Price, PriceBook, PriceTier
from providers.canonical import Usage

# Any connection or name lookup beyond loopback fails the test (tests/engine/conftest.py).
pytestmark = pytest.mark.usefixtures("no_network")


PROVIDERS = """
[providers.openai]
protocol = "openai"
base_url = "https://api.openai.com/v1"

[providers.anthropic]
protocol = "anthropic"
base_url = "https://api.anthropic.com"

[providers.google]
protocol = "openai"
base_url = "https://generativelanguage.googleapis.com/v1beta/openai"

[providers.deepseek]
protocol = "openai"
base_url = "https://api.deepseek.com/v1"

[providers.groq]
protocol = "openai"
base_url = "https://api.groq.com/openai/v1"

[providers.local]
protocol = "openai"
base_url = "http://127.0.0.1:11434/v1"

[providers.gateway]
protocol = "openai"
base_url = "http://127.0.0.1:4000"
price_provider = "openai"

[providers.sim]
protocol = "openai"
simulated = {}
"""


def config(deployments: str) -> Config:
    """The providers above, the given deployments, and a tier of them all."""
    names = re.findall(r"^\[deployments\.([\w-]+)\]", deployments, re.MULTILINE)
    tier = "\n[tiers.t]\ndeployments = [" + ", ".join(f'"{n}"' for n in names) + "]\n"
    return parse_config(PROVIDERS + deployments + tier)


def bundled(usage: GenaiUsage, model: str, provider: str, **kw: Any) -> float:
    """What genai-prices itself computes, for comparison."""
    return float(calc_price(usage, model, provider_id=provider, **kw).total_price)


MINI = """
[deployments.mini]
provider = "openai"
model = "gpt-4o-mini"
"""


# -- where a price comes from ----------------------------------------------------------------


def test_known_models_get_the_bundled_price() -> None:
    book = PriceBook(
        config(
            MINI
            + """
[deployments.haiku]
provider = "anthropic"
model = "claude-3-5-haiku-20241022"

[deployments.llama]
provider = "groq"
model = "llama-3.1-8b-instant"
"""
        )
    )
    for name, model, provider in [
        ("mini", "gpt-4o-mini", "openai"),
        ("haiku", "claude-3-5-haiku-20241022", "anthropic"),
        ("llama", "llama-3.1-8b-instant", "groq"),
    ]:
        price = book.price(name)
        assert price is not None and price.source == "genai-prices", name
        assert price.input_per_mtok > 0 and price.output_per_mtok > 0
        usage = Usage(input_tokens=1_000_000, output_tokens=1_000_000)
        expected = bundled(
            GenaiUsage(input_tokens=1_000_000, output_tokens=1_000_000), model, provider
        )
        assert book.cost(name, usage) == pytest.approx(expected, rel=1e-12)
    assert book.unpriced() == ()
    mini = book.price("mini")
    assert mini is not None and (mini.input_per_mtok, mini.output_per_mtok) == (0.15, 0.6)
    assert mini.cached_input_per_mtok == 0.075


def test_a_config_price_beats_the_bundled_one() -> None:
    book = PriceBook(
        config(
            """
[deployments.mini]
provider = "openai"
model = "gpt-4o-mini"
price = { input_per_mtok = 1.0, output_per_mtok = 2.0, cached_input_per_mtok = 0.5 }
"""
        )
    )
    assert book.price("mini") == Price(1.0, 2.0, 0.5, source="config")


def test_price_provider_beats_the_guess_from_the_base_url() -> None:
    book = PriceBook(
        config(
            MINI
            + """
[deployments.via-gateway]
provider = "gateway"
model = "gpt-4o-mini-2024-07-18"

[deployments.local]
provider = "local"
model = "gpt-4o-mini"

[deployments.sim]
provider = "sim"
model = "gpt-4o-mini"
"""
        )
    )
    gateway = book.price("via-gateway")
    assert gateway is not None and gateway == book.price("mini")
    # A local server or the simulator gets no guess, even for a well-known model id.
    assert book.price("local") is None
    assert book.price("sim") is None
    assert book.unpriced() == ("local", "sim")
    reason = book.unpriced_reason("local")
    assert reason is not None and "price_provider" in reason
    assert book.unpriced_reason("mini") is None


def test_an_unknown_model_is_unpriced_never_zero() -> None:
    book = PriceBook(
        config(
            MINI
            + """
[deployments.mystery]
provider = "openai"
model = "gpt-nonexistent-9"
"""
        )
    )
    assert book.price("mystery") is None
    assert book.cost("mystery", Usage(input_tokens=1000, output_tokens=1000)) is None
    assert book.worst_case("mystery", 1000, 1000) is None
    assert book.unpriced() == ("mystery",)
    reason = book.unpriced_reason("mystery")
    assert reason is not None and "gpt-nonexistent-9" in reason
    assert book.price("not-a-deployment") is None


def test_an_unknown_price_provider_is_unpriced() -> None:
    cfg = parse_config(
        """
[providers.odd]
protocol = "openai"
base_url = "https://api.openai.com/v1"
price_provider = "no-such-provider"

[deployments.mini]
provider = "odd"
model = "gpt-4o-mini"

[tiers.t]
deployments = ["mini"]
"""
    )
    book = PriceBook(cfg)
    assert book.unpriced() == ("mini",)
    reason = book.unpriced_reason("mini")
    assert reason is not None and "no-such-provider" in reason


# -- what a call costs -----------------------------------------------------------------------

PRICED = """
[deployments.mini]
provider = "sim"
model = "m"
price = { input_per_mtok = 2.0, output_per_mtok = 8.0, cached_input_per_mtok = 0.5 }

[deployments.nocache]
provider = "sim"
model = "m"
price = { input_per_mtok = 2.0, output_per_mtok = 8.0 }
"""


def test_cost_arithmetic_with_cached_input() -> None:
    book = PriceBook(config(PRICED))
    usage = Usage(input_tokens=1000, output_tokens=500)
    assert book.cost("mini", usage) == pytest.approx((1000 * 2 + 500 * 8) / 1e6)
    assert book.cost("mini", usage, cached_input_tokens=200) == pytest.approx(
        (800 * 2 + 200 * 0.5 + 500 * 8) / 1e6
    )
    # Without a cached rate, cached tokens cost what input costs.
    assert book.cost("nocache", usage, cached_input_tokens=200) == book.cost("nocache", usage)
    # More cached than input is taken as all of the input.
    assert book.cost("mini", usage, cached_input_tokens=5000) == pytest.approx(
        (1000 * 0.5 + 500 * 8) / 1e6
    )
    assert book.cost("mini", Usage()) == 0.0  # priced, and nothing used: truly $0


def test_cached_input_costs_what_genai_prices_says() -> None:
    book = PriceBook(config(MINI))
    mine = book.cost(
        "mini", Usage(input_tokens=10_000, output_tokens=300), cached_input_tokens=4000
    )
    theirs = bundled(
        GenaiUsage(input_tokens=10_000, cache_read_tokens=4000, output_tokens=300),
        "gpt-4o-mini",
        "openai",
    )
    assert mine == pytest.approx(theirs, rel=1e-12)


def test_worst_case_is_all_input_uncached_and_the_full_output() -> None:
    book = PriceBook(config(PRICED))
    assert book.worst_case("mini", 3000, 1024) == pytest.approx((3000 * 2 + 1024 * 8) / 1e6)
    cost = book.cost("mini", Usage(input_tokens=3000, output_tokens=10), cached_input_tokens=3000)
    worst = book.worst_case("mini", 3000, 1024)
    assert cost is not None and worst is not None and cost < worst


def test_long_context_rates_apply_over_their_threshold() -> None:
    book = PriceBook(
        config(
            """
[deployments.sonnet]
provider = "anthropic"
model = "claude-sonnet-4-5"

[deployments.gemini]
provider = "google"
model = "gemini-2.5-pro"
"""
        )
    )
    for name, model, provider in [
        ("sonnet", "claude-sonnet-4-5", "anthropic"),
        ("gemini", "gemini-2.5-pro", "google"),
    ]:
        price = book.price(name)
        assert price is not None and price.tiers, name
        threshold = price.tiers[0].above_input_tokens
        for input_tokens in (1000, threshold, threshold + 1, 3 * threshold):
            usage = Usage(input_tokens=input_tokens, output_tokens=2000)
            theirs = bundled(
                GenaiUsage(
                    input_tokens=input_tokens,
                    cache_read_tokens=input_tokens // 4,
                    output_tokens=2000,
                ),
                model,
                provider,
            )
            mine = book.cost(name, usage, cached_input_tokens=input_tokens // 4)
            assert mine == pytest.approx(theirs, rel=1e-12), (name, input_tokens)
        under = book.worst_case(name, threshold, 1000)
        over = book.worst_case(name, threshold + 1, 1000)
        assert under is not None and over is not None and over > 1.5 * under


def test_tiers_pick_the_highest_threshold_the_input_is_over() -> None:
    price = Price(
        1.0,
        2.0,
        None,
        source="genai-prices",
        tiers=(PriceTier(100, 10.0, 20.0, None), PriceTier(200, 100.0, 200.0, None)),
    )
    assert price.cost(100, 0) == pytest.approx(100 * 1.0 / 1e6)
    assert price.cost(101, 0) == pytest.approx(101 * 10.0 / 1e6)
    assert price.cost(201, 1) == pytest.approx((201 * 100.0 + 200.0) / 1e6)


def test_time_of_day_discounts_are_never_assumed() -> None:
    deepseek = """
[deployments.chat]
provider = "deepseek"
model = "deepseek-chat"
"""
    peak = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)
    off_peak = datetime(2026, 1, 5, 20, 0, tzinfo=UTC)
    at_peak = PriceBook(config(deepseek), now=peak).price("chat")
    at_night = PriceBook(config(deepseek), now=off_peak).price("chat")
    assert at_peak is not None and at_peak == at_night
    usage = GenaiUsage(input_tokens=1_000_000, output_tokens=1_000_000)
    day_rate = bundled(usage, "deepseek-chat", "deepseek", genai_request_timestamp=peak)
    night_rate = bundled(usage, "deepseek-chat", "deepseek", genai_request_timestamp=off_peak)
    assert night_rate < day_rate  # the data has a discount, and the book does not assume it
    assert at_night.cost(1_000_000, 1_000_000) == pytest.approx(day_rate, rel=1e-12)


# -- no network ------------------------------------------------------------------------------


def test_prices_resolve_with_every_connection_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[object] = []

    def refuse(*args: object, **kwargs: object) -> None:
        calls.append(args)
        raise OSError("no network at all")

    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)

    book = PriceBook(config(MINI))
    price = book.price("mini")
    assert price is not None and price.source == "genai-prices"
    direct = calc_price(
        GenaiUsage(input_tokens=1000, output_tokens=10), "gpt-4o-mini", provider_id="openai"
    )
    assert float(direct.total_price) > 0
    assert calls == []
