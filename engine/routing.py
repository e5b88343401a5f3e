"""The routing layer: which tier a request belongs to, and the ordered deployments that serve it.

`Router.route` resolves the requested ``model`` — a tier name, a deployment name or an alias of
either — into a `Route`: the tier (None when a deployment was pinned), the reason the tier was
chosen, and the chain of deployments to try in order. Deployments that cannot serve the request
are left out of the chain, and each one left out is named in ``skipped`` with the reason, so an
error can say exactly what excluded every candidate.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

from engine.config import Config, TierConfig
from providers.canonical import ChatRequest, ImagePart


class RoutingError(Exception):
    """No route: ``status`` is the HTTP status to answer with, ``code`` a stable error code."""

    def __init__(self, message: str, *, status: int, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class Route:
    tier: str | None
    reason: str
    """Why this tier: ``alias``, ``tier`` or ``deployment`` (pinned)."""
    chain: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    """(deployment, why it was left out of the chain)."""


class Router:
    def __init__(self, config: Config) -> None:
        self._config = config
        self._names = config.model_names()

    def model_names(self) -> tuple[str, ...]:
        return tuple(self._names)

    def route(
        self,
        request: ChatRequest,
        *,
        drained: frozenset[str] = frozenset(),
        force_tier: str | None = None,
    ) -> Route:
        """Resolve ``request.model``; ``force_tier`` (safe mode) overrides the tier it names."""
        target = self._names.get(request.model)
        if target is None:
            close = difflib.get_close_matches(request.model, list(self._names), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise RoutingError(
                f"The model {request.model!r} is not known to this routedeck.{hint} "
                f"Use a tier ({', '.join(self._config.tiers)}) or one of the names "
                "GET /v1/models lists.",
                status=404,
                code="model_not_found",
            )
        kind, name = target.split(":", 1)
        reason = "alias" if request.model in self._config.aliases else kind
        if force_tier is not None:
            kind, name, reason = "tier", force_tier, "safe_mode"
        if kind == "tier":
            candidates = self._config.tiers[name].deployments
            tier: str | None = name
        else:
            candidates = (name,)
            tier = None
        chain: list[str] = []
        skipped: list[tuple[str, str]] = []
        for dep_name in candidates:
            why = self._excluded(dep_name, request, drained)
            if why:
                skipped.append((dep_name, why))
            else:
                chain.append(dep_name)
        if not chain:
            reasons = "; ".join(f"{d}: {why}" for d, why in skipped)
            raise RoutingError(
                f"No deployment can serve model {request.model!r} right now ({reasons}).",
                status=503,
                code="no_deployment",
            )
        return Route(tier=tier, reason=reason, chain=tuple(chain), skipped=tuple(skipped))

    def _excluded(self, name: str, request: ChatRequest, drained: frozenset[str]) -> str:
        dep = self._config.deployments[name]
        if name in drained or dep.provider in drained:
            return "drained"
        caps = dep.capabilities
        if request.tools and "tools" not in caps:
            return "does not support tools"
        if "vision" not in caps and _has_image(request):
            return "does not support images"
        if request.stream and "streaming" not in caps:
            return "does not support streaming"
        fmt = (request.response_format or {}).get("type")
        if fmt in ("json_object", "json_schema") and "json" not in caps:
            return "does not support JSON mode"
        return ""

    def tier_of(self, route: Route) -> TierConfig:
        """The tier whose timeouts govern a route; a pinned deployment uses its first tier."""
        if route.tier is not None:
            return self._config.tiers[route.tier]
        for tier in self._config.tiers.values():
            if route.chain[0] in tier.deployments:
                return tier
        return TierConfig(deployments=route.chain)


def _has_image(request: ChatRequest) -> bool:
    return any(isinstance(p, ImagePart) for m in request.messages for p in m.content)
