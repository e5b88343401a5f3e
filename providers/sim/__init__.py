"""The simulated upstream: a real HTTP server speaking OpenAI Chat Completions and Anthropic
Messages, with deterministic replies and failure injection, for development, tests, benchmarks
and incident drills. See docs/sim.md.

Public API (everything else in this package is internal)::

    SimServer(*, host="127.0.0.1", port=0, profiles={}, seed=0, ...)   async context manager
        .port  .url  .base_url(provider, protocol)  .chaos  .stats()  .reset_stats()
    SimProfile(latency_ms, ttft_ms, tokens_per_s, jitter, context_window, require_key, models)
    ChaosController.set(provider, *, model=None, **knobs) / .clear(provider=None) / .rules()
    ChaosRule, ChaosError
    count_tokens(text), count_value_tokens(value)    the documented token rule
    serve_forever(host, port, *, profiles, seed, ready, stop), main(argv)
"""

from providers.sim.chaos import ChaosController, ChaosError, ChaosRule
from providers.sim.cli import main, serve_forever
from providers.sim.profile import SimProfile
from providers.sim.replies import TOKEN_PATTERN, count_tokens, count_value_tokens
from providers.sim.server import SimServer

__all__ = [
    "TOKEN_PATTERN",
    "ChaosController",
    "ChaosError",
    "ChaosRule",
    "SimProfile",
    "SimServer",
    "count_tokens",
    "count_value_tokens",
    "main",
    "serve_forever",
]
