"""Deployment prices, and what a call costs in US dollars.

`PriceBook(config)` resolves every deployment's price once, when it is built, in this order:

1. the deployment's ``price`` in the config (source ``"config"``);
2. the price data bundled with the genai-prices package (source ``"genai-prices"``), looked up
   by the deployment's upstream ``model`` at the provider's ``price_provider``, or, without one,
   at the provider its ``base_url`` belongs to (genai-prices' own URL patterns:
   ``api.openai.com`` is openai, ``api.anthropic.com`` anthropic, and likewise groq, together,
   openrouter, mistral, deepseek, x-ai, Azure, Bedrock ...). A simulated provider, or a base URL
   no known provider serves (a local server, an in-house gateway), gets no guess: set
   ``price_provider`` or a price to price it;
3. else the deployment is *unpriced*: `PriceBook.price` and `PriceBook.cost` return None. An
   unknown price is never $0; `PriceBook.unpriced` lists them for the console and alerts.

What a caller may rely on:

- Nothing is fetched, ever: the bundled data is read from the installed package, and
  genai-prices' updater is never started. Lookups after construction are dictionary reads.
- Prices are the standard rates as of construction. A rate that varies by time of day resolves
  to the day's highest, so a cost never assumes an off-peak discount. Long-context rates
  (genai-prices' tiers, e.g. over 200k input tokens) are kept in `Price.tiers` and applied by
  the input size of each call, as the providers bill them.
- ``usage.input_tokens`` counts every input token, those read from the provider's prompt cache
  included; pass how many were cached as ``cached_input_tokens`` to bill them at the cached
  rate (the input rate when the price has none). Cache writes are billed at the input rate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Literal

from genai_prices import data_snapshot
from genai_prices.types import ModelInfo, ModelPrice, TieredPrices

from engine.config import Config, DeploymentConfig, ProviderConfig
from providers.canonical import Usage

log = logging.getLogger("routedeck.pricing")

PriceSource = Literal["config", "genai-prices"]

_PER_MTOK = 1_000_000
_Rate = Decimal | TieredPrices


@dataclass(frozen=True, slots=True)
class PriceTier:
    """Rates for a call whose input is over ``above_input_tokens``: they apply to all its tokens."""

    above_input_tokens: int
    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million tokens."""

    input_per_mtok: float
    output_per_mtok: float
    cached_input_per_mtok: float | None
    """Input tokens read from the provider's prompt cache; None: billed as input."""
    source: PriceSource
    tiers: tuple[PriceTier, ...] = ()
    """Long-context rates, by ascending threshold; the highest one the input is over applies."""

    def cost(self, input_tokens: int, output_tokens: int, cached_input_tokens: int = 0) -> float:
        """Dollars for one call; ``cached_input_tokens`` are part of ``input_tokens``."""
        rates: Price | PriceTier = self
        for tier in self.tiers:
            if input_tokens > tier.above_input_tokens:
                rates = tier
        cached = min(max(cached_input_tokens, 0), input_tokens)
        cached_rate = rates.cached_input_per_mtok
        if cached_rate is None:
            cached_rate = rates.input_per_mtok
        return (
            (input_tokens - cached) * rates.input_per_mtok
            + cached * cached_rate
            + output_tokens * rates.output_per_mtok
        ) / _PER_MTOK


class PriceBook:
    """Every deployment's price, resolved once from the config and the bundled data.

    ``now`` is the moment prices are resolved for (default: the current time).
    """

    def __init__(self, config: Config, *, now: datetime | None = None) -> None:
        self._prices: dict[str, Price] = {}
        self._unpriced: dict[str, str] = {}
        bundled: _Bundled | None = None
        for name, dep in config.deployments.items():
            if dep.price is not None:
                self._prices[name] = Price(
                    input_per_mtok=dep.price.input_per_mtok,
                    output_per_mtok=dep.price.output_per_mtok,
                    cached_input_per_mtok=dep.price.cached_input_per_mtok,
                    source="config",
                )
                continue
            if bundled is None:  # the data is only loaded when a deployment needs it
                bundled = _Bundled(now or datetime.now(tz=UTC))
            provider = config.providers.get(dep.provider)
            found = bundled.price(dep, provider) if provider is not None else "has no provider"
            if isinstance(found, Price):
                self._prices[name] = found
            else:
                self._unpriced[name] = found
                log.info("deployment %s is unpriced: %s", name, found)

    def price(self, deployment: str) -> Price | None:
        """The deployment's price; None when it is unpriced or not a deployment of the config."""
        return self._prices.get(deployment)

    def cost(self, deployment: str, usage: Usage, *, cached_input_tokens: int = 0) -> float | None:
        """Dollars for one call's usage; None (never 0) when the deployment is unpriced."""
        price = self._prices.get(deployment)
        if price is None:
            return None
        return price.cost(usage.input_tokens, usage.output_tokens, cached_input_tokens)

    def worst_case(
        self, deployment: str, input_tokens: int, max_output_tokens: int
    ) -> float | None:
        """The most a call can cost: every input token uncached, the full output used.

        For budget reservations. None when the deployment is unpriced.
        """
        price = self._prices.get(deployment)
        if price is None:
            return None
        return price.cost(input_tokens, max_output_tokens)

    def unpriced(self) -> tuple[str, ...]:
        """Deployments with no price, in config order."""
        return tuple(self._unpriced)

    def unpriced_reason(self, deployment: str) -> str | None:
        """Why a deployment is unpriced, with what to do; None when it has a price."""
        return self._unpriced.get(deployment)


class _Bundled:
    """Lookups in genai-prices' bundled data, at one moment."""

    def __init__(self, now: datetime) -> None:
        self._now = now
        # The bundled snapshot unless something in this process installed fetched data; this
        # never fetches.
        self._snapshot = data_snapshot.get_snapshot()

    def price(self, dep: DeploymentConfig, provider: ProviderConfig) -> Price | str:
        """The bundled price of ``dep``, or why there is none."""
        snapshot = self._snapshot
        try:
            if provider.price_provider is not None:
                found = snapshot.find_provider(None, provider.price_provider, None)
            elif provider.base_url is not None:
                found = snapshot.find_provider(None, None, provider.base_url)
            else:
                return (
                    f"model {dep.model!r} is served by a simulated provider; "
                    "set a price on the deployment"
                )
        except LookupError:
            if provider.price_provider is not None:
                return (
                    f"price_provider {provider.price_provider!r} is not in the genai-prices data; "
                    "use its id there (openai, anthropic, groq, ...) or set a price"
                )
            return (
                f"no known provider serves {provider.base_url}; "
                "set price_provider on the provider or a price on the deployment"
            )
        model = found.find_model(dep.model, all_providers=snapshot.providers)
        if model is None:
            return (
                f"model {dep.model!r} is not in the genai-prices data for {found.id}; "
                "set a price on the deployment"
            )
        price = self._standard(model)
        input_rate, output_rate = price.input_mtok, price.output_mtok
        if input_rate is None or output_rate is None:
            return (
                f"model {dep.model!r} at {found.id} has no per-token input and output price in "
                "the genai-prices data; set a price on the deployment"
            )
        return _to_price(input_rate, output_rate, price.cache_read_mtok)

    def _standard(self, model: ModelInfo) -> ModelPrice:
        """The model's standard rates today; the highest when they vary by time of day."""
        day = self._now.astimezone(UTC).replace(hour=0, minute=15, second=0, microsecond=0)
        samples = [model.get_prices(day + timedelta(minutes=30 * i)) for i in range(48)]
        return max(samples, key=lambda p: (_base(p.input_mtok), _base(p.output_mtok)))


def _base(value: Decimal | TieredPrices | None) -> Decimal:
    if isinstance(value, TieredPrices):
        return value.base
    return value if value is not None else Decimal(0)


def _to_price(input_rate: _Rate, output_rate: _Rate, cached_rate: _Rate | None) -> Price:
    """A `Price` from genai-prices rates, each flat or a base rate with thresholds."""
    thresholds = sorted(
        {
            tier.start
            for rate in (input_rate, output_rate, cached_rate)
            if isinstance(rate, TieredPrices)
            for tier in rate.tiers
        }
    )
    return Price(
        input_per_mtok=_at(input_rate, None),
        output_per_mtok=_at(output_rate, None),
        cached_input_per_mtok=None if cached_rate is None else _at(cached_rate, None),
        source="genai-prices",
        tiers=tuple(
            PriceTier(
                above_input_tokens=start,
                input_per_mtok=_at(input_rate, start),
                output_per_mtok=_at(output_rate, start),
                cached_input_per_mtok=None if cached_rate is None else _at(cached_rate, start),
            )
            for start in thresholds
        ),
    )


def _at(rate: _Rate, above: int | None) -> float:
    """The rate for a call whose input is over ``above`` tokens (None: under every threshold)."""
    if not isinstance(rate, TieredPrices):
        return float(rate)
    value = rate.base
    for tier in rate.tiers:  # ascending
        if above is not None and tier.start <= above:
            value = tier.price
    return float(value)
