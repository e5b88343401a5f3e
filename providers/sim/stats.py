"""Request counts of the simulated upstream, by provider, model and outcome.

Only inference requests (chat completions and messages) are counted; model listings and the
control endpoint are not. Outcomes:

``ok``               answered in full (streamed or not)
``error_<status>``   an error injected by chaos, e.g. ``error_429``
``hang``             held open by chaos until the client went away
``reset``            TCP reset by chaos
``midstream_fail``   connection closed by chaos partway through the response
``invalid``          rejected as a bad request (malformed JSON, missing fields, too large)
``context_length``   rejected: the prompt exceeds the profile's context window
``auth``             rejected: missing or wrong API key
``disconnected``     the client went away before the response was complete

A request whose body could not be read as JSON with a string ``model`` is counted under model
``"-"``.
"""

from __future__ import annotations

from collections import Counter
from typing import Any


class SimStats:
    """Counters owned by one `SimServer`, used on its event loop only."""

    def __init__(self) -> None:
        self._counts: Counter[tuple[str, str, str]] = Counter()
        self.in_flight = 0

    def record(self, provider: str, model: str, outcome: str) -> None:
        self._counts[(provider, model, outcome)] += 1

    def reset(self) -> None:
        """Zero the counters (requests in flight stay counted as in flight)."""
        self._counts.clear()

    def snapshot(self) -> dict[str, Any]:
        """A JSON-ready copy::

        {"total": 3, "in_flight": 0,
         "by_outcome": {"ok": 2, "error_429": 1},
         "by_provider": {"sim-fast": {"ok": 2, "error_429": 1}},
         "by_model": {"gpt-4o-mini": {"ok": 2, "error_429": 1}},
         "rows": [{"provider": "sim-fast", "model": "gpt-4o-mini", "outcome": "ok",
                   "count": 2}, ...]}
        """
        by_outcome: Counter[str] = Counter()
        by_provider: dict[str, Counter[str]] = {}
        by_model: dict[str, Counter[str]] = {}
        rows = []
        for (provider, model, outcome), count in sorted(self._counts.items()):
            by_outcome[outcome] += count
            by_provider.setdefault(provider, Counter())[outcome] += count
            by_model.setdefault(model, Counter())[outcome] += count
            rows.append({"provider": provider, "model": model, "outcome": outcome, "count": count})
        return {
            "total": sum(by_outcome.values()),
            "in_flight": self.in_flight,
            "by_outcome": dict(by_outcome),
            "by_provider": {k: dict(v) for k, v in by_provider.items()},
            "by_model": {k: dict(v) for k, v in by_model.items()},
            "rows": rows,
        }
