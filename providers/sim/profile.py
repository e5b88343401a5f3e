"""How a simulated provider behaves when nothing is going wrong: `SimProfile`.

A `SimServer` picks one profile per provider prefix (``/{provider}/v1/...``); a prefix without a
profile of its own gets the ``"default"`` entry of the mapping, or ``SimProfile()`` when there
is none. Profiles are immutable; failures are injected separately, at run time, by
`providers.sim.chaos`.

Timing model, deterministic for a given server seed and request order:

- non-streaming: the answer is sent ``latency_ms`` after the request was read;
- streaming: the first event (with the first token) is sent after ``ttft_ms``, then tokens
  follow at ``tokens_per_s`` (``0`` sends them all at once);
- ``jitter`` is a fraction: each request draws one factor uniformly from
  ``[1 - jitter, 1 + jitter]`` and scales ``latency_ms`` and ``ttft_ms`` by it and divides
  ``tokens_per_s`` by it, so a slow request is slow throughout.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

DEFAULT_MODELS = ("sim-small", "sim-medium", "sim-large")


@dataclass(frozen=True, slots=True)
class SimProfile:
    """The steady-state behaviour of one simulated provider.

    ``context_window`` bounds the prompt (counted by `providers.sim.replies.count_tokens`'s
    rule); a longer prompt gets the protocol's context-length error. ``require_key``, when set,
    is the only API key accepted (``Authorization: Bearer`` or ``x-api-key``). ``models`` is what
    ``GET /v1/models`` lists; any model name is answered regardless.
    """

    latency_ms: float = 0.0
    ttft_ms: float = 0.0
    tokens_per_s: float = 0.0
    jitter: float = 0.0
    context_window: int = 128_000
    require_key: str | None = None
    models: tuple[str, ...] = DEFAULT_MODELS

    def __post_init__(self) -> None:
        for name in ("latency_ms", "ttft_ms", "tokens_per_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"SimProfile.{name} must be a finite number >= 0, got {value!r}")
        if not 0.0 <= self.jitter < 1.0:
            raise ValueError(f"SimProfile.jitter must be in [0, 1), got {self.jitter!r}")
        if self.context_window < 1:
            raise ValueError(f"SimProfile.context_window must be >= 1, got {self.context_window!r}")


NO_PROFILES: Mapping[str, SimProfile] = MappingProxyType({})
"""An empty, immutable profile mapping: every prefix gets ``SimProfile()``."""
