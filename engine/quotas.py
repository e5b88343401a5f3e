"""Per-tenant rate quotas: requests per minute and tokens per minute.

A request is checked before it is routed: when the tenant's requests in the last 60 seconds
have reached ``rpm``, or its tokens in the last 60 seconds plus this request's input estimate
would pass ``tpm``, it is refused with the seconds to wait (for Retry-After). Tokens are counted
as requests finish (provider-reported input and output when known). Windows are one-second
buckets, so memory is fixed per tenant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from engine.config import TenantConfig
from engine.windows import RollingCounter

WINDOW_S = 60


class QuotaExceeded(Exception):
    def __init__(self, tenant: str, which: str, limit: int, used: int, retry_after: float) -> None:
        unit = "requests" if which == "rpm" else "tokens"
        self.message = (
            f"Tenant {tenant!r} is over its {which.upper()} quota: {used} {unit} in the last "
            f"minute against a limit of {limit}. Retry after {math.ceil(retry_after)} s, or ask "
            "for a higher quota."
        )
        super().__init__(self.message)
        self.tenant = tenant
        self.which = which
        """``rpm`` or ``tpm``."""
        self.retry_after = retry_after


class Quotas:
    def __init__(self, tenants: Mapping[str, TenantConfig]) -> None:
        self._tenants = tenants
        self._requests: dict[str, RollingCounter] = {}
        self._tokens: dict[str, RollingCounter] = {}

    def _counter(self, table: dict[str, RollingCounter], tenant: str) -> RollingCounter:
        counter = table.get(tenant)
        if counter is None:
            counter = table[tenant] = RollingCounter(WINDOW_S)
        return counter

    @staticmethod
    def _retry_after(counter: RollingCounter, now: float, excess: int) -> float:
        """Seconds until enough of the window's oldest counts expire to drop ``excess``."""
        series = counter.series(now, WINDOW_S)
        freed = 0
        for age, count in enumerate(series):
            freed += count
            if freed >= excess:
                return max(1.0, age + 1 - (now - int(now)))
        return float(WINDOW_S)

    def admit(self, tenant: str, input_tokens: int, now: float) -> None:
        """Count a request against its tenant; raises `QuotaExceeded` (counting nothing)."""
        config = self._tenants.get(tenant)
        if config is None or (config.rpm is None and config.tpm is None):
            return
        requests = self._counter(self._requests, tenant)
        if config.rpm is not None:
            used = requests.total(now)
            if used >= config.rpm:
                raise QuotaExceeded(
                    tenant,
                    "rpm",
                    config.rpm,
                    used,
                    self._retry_after(requests, now, used - config.rpm + 1),
                )
        if config.tpm is not None:
            tokens = self._counter(self._tokens, tenant)
            used = tokens.total(now)
            if used + input_tokens > config.tpm:
                wait = self._retry_after(tokens, now, used + input_tokens - config.tpm)
                raise QuotaExceeded(tenant, "tpm", config.tpm, used, wait)
        requests.add(now)

    def used_tokens(self, tenant: str, tokens: int, now: float) -> None:
        config = self._tenants.get(tenant)
        if config is not None and config.tpm is not None and tokens > 0:
            self._counter(self._tokens, tenant).add(now, tokens)
