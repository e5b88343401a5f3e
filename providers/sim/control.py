"""The simulator's control endpoint, ``/_sim/...``: chaos rules and request counts over HTTP.

``GET /_sim/chaos``           → ``{"rules": [rule, ...]}``
``POST /_sim/chaos``          body ``{"provider": "sim-fast" | "*", "model": ..., knobs...}`` sets
                              (replaces) the rule of that scope → ``{"rule": rule, "rules": [...]}``
``DELETE /_sim/chaos``        clears every rule, or with ``?provider=P[&model=M]`` those of one
                              scope → ``{"cleared": n, "rules": [...]}``
``GET /_sim/stats``           → `providers.sim.stats.SimStats.snapshot`
``POST /_sim/stats/reset``    zeroes the counts → the (empty) snapshot

A rule is `providers.sim.chaos.ChaosRule.to_json`. Errors are ``{"error": {"message": ...}}``
with 400 (a knob out of range, an unknown key, malformed JSON), 404 or 405.
"""

from __future__ import annotations

from urllib.parse import parse_qs

import orjson

from providers.sim.chaos import ChaosController, ChaosError, ChaosRule
from providers.sim.http11 import HttpConnection, Request
from providers.sim.stats import SimStats

PREFIX = "/_sim/"


def handle_control(
    request: Request, conn: HttpConnection, chaos: ChaosController, stats: SimStats
) -> None:
    """Answer one ``/_sim/...`` request (synchronously: nothing here waits)."""
    route = request.path[len(PREFIX) :].rstrip("/")
    method = request.method
    if route == "chaos":
        if method == "GET":
            _ok(conn, {"rules": _rules(chaos)})
        elif method == "POST":
            try:
                rule = chaos.put(ChaosRule.from_json(orjson.loads(request.body or b"null")))
            except orjson.JSONDecodeError as exc:
                _error(conn, 400, f"the body is not valid JSON: {exc}")
            except ChaosError as exc:
                _error(conn, 400, str(exc))
            else:
                _ok(conn, {"rule": rule.to_json(), "rules": _rules(chaos)})
        elif method == "DELETE":
            query = parse_qs(request.query)
            provider = query.get("provider", [None])[0]
            model = query.get("model", [None])[0]
            cleared = chaos.clear(provider, model)
            _ok(conn, {"cleared": cleared, "rules": _rules(chaos)})
        else:
            _error(
                conn,
                405,
                f"{method} is not allowed here; use GET, POST or DELETE",
                "GET, POST, DELETE",
            )
    elif route == "stats":
        if method == "GET":
            _ok(conn, stats.snapshot())
        else:
            _error(conn, 405, f"{method} is not allowed here; use GET", "GET")
    elif route == "stats/reset":
        if method == "POST":
            stats.reset()
            _ok(conn, stats.snapshot())
        else:
            _error(conn, 405, f"{method} is not allowed here; use POST", "POST")
    else:
        _error(conn, 404, f"no control endpoint {request.path}; see docs/sim.md")


def _rules(chaos: ChaosController) -> list[dict[str, object]]:
    return [rule.to_json() for rule in chaos.rules()]


def _ok(conn: HttpConnection, payload: object) -> None:
    conn.respond(200, orjson.dumps(payload))


def _error(conn: HttpConnection, status: int, message: str, allow: str | None = None) -> None:
    headers = [("allow", allow)] if allow else []
    conn.respond(status, orjson.dumps({"error": {"message": message}}), headers=headers)
