"""The routing layer: which tier a request belongs to, and the ordered deployments that serve it.

Tier decision, in order, with the reason recorded in headers, the log and the snapshot:

1. ``alias`` / ``tier`` / ``deployment``: the requested ``model`` names an alias, a tier or a
   deployment (a pinned deployment has no tier).
2. ``task``: the model is one of ``[classifier] auto_models`` and the request names a task type
   (``x-routedeck-task`` header or ``metadata.task``) that ``[tasks]`` maps to a tier.
3. ``rule:<name>``: the first ``[[classifier.rules]]`` entry whose conditions all hold.
4. ``default``: ``[classifier] default_tier``.

Safe mode overrides all of it with the safe-mode tier (reason ``safe_mode``).

Deployment selection: the tier's steps in order; a weighted step puts one of its deployments
first (drawn by weight) and the rest right after it. Then every deployment that cannot serve
this request is left out, and `Route.skipped` names each one with the reason: drained, breaker
open or cooling down, a capability the request needs (tools, JSON mode, images, streaming), a
context window or output limit too small for the request, the region or compliance
constraints of the tenant or request, or a cost over the fallback cost ceiling. A constraint is
never relaxed to find a deployment: when nothing is left, `RoutingError` says what excluded
each candidate.
"""

from __future__ import annotations

import difflib
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

from engine.config import Config, DeploymentConfig, PolicyConfig, TierConfig
from engine.tokens import estimate_input_tokens
from providers.canonical import ChatRequest, ImagePart

# Expected output when the client sets no max_tokens, for the cost-ceiling estimate.
_DEFAULT_OUTPUT_ESTIMATE = 256


class RoutingError(Exception):
    """No route: ``status`` is the HTTP status to answer with, ``code`` a stable error code."""

    def __init__(self, message: str, *, status: int, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class Constraints:
    """Where a request may be served: the tenant's constraints and the request's own."""

    regions: frozenset[str] | None = None
    """Allowed provider regions; None allows any."""
    compliance: frozenset[str] = frozenset()
    """Tags every serving provider must have."""

    def merge(self, other: Constraints) -> Constraints:
        if self.regions is None:
            regions = other.regions
        elif other.regions is None:
            regions = self.regions
        else:
            regions = self.regions & other.regions
        return Constraints(regions, self.compliance | other.compliance)


ANYWHERE = Constraints()
"""No constraint: any region, no compliance tag required."""


@dataclass(frozen=True, slots=True)
class Route:
    tier: str | None
    reason: str
    """Why this tier: alias, tier, deployment, task, rule:<name>, default or safe_mode."""
    chain: tuple[str, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    """(deployment, why it was left out of the chain)."""
    task: str | None = None
    input_tokens_estimate: int = 0
    policy: PolicyConfig | None = None
    """The fallback policy of the release that made the route (None: the engine's)."""


Unavailable = Callable[[str], str]
"""Why a deployment cannot take traffic right now (breaker, cooldown), or ""."""


def _no_outage(name: str) -> str:
    return ""


class Router:
    def __init__(self, config: Config, *, rng: random.Random | None = None) -> None:
        self._config = config
        self._names = config.model_names()
        self._rng = rng or random.Random()
        self._patterns = {
            rule.name: re.compile(rule.pattern) for rule in config.classifier.rules if rule.pattern
        }

    def model_names(self) -> tuple[str, ...]:
        return tuple(self._names)

    # -- the tier --------------------------------------------------------------------------

    def decide(self, request: ChatRequest, task: str | None) -> tuple[str, str | None, str]:
        """(kind, name, reason): kind is "tier" or "deployment"; name None only for errors."""
        target = self._names.get(request.model)
        if target is None:
            close = difflib.get_close_matches(request.model, list(self._names), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise RoutingError(
                f"The model {request.model!r} is not known to this routedeck.{hint} "
                f"Use a tier ({', '.join(self._config.tiers)}), "
                f"{' or '.join(repr(a) for a in self._config.classifier.auto_models)} to let "
                "routedeck choose, or one of the names GET /v1/models lists.",
                status=404,
                code="model_not_found",
            )
        kind, name = target.split(":", 1)
        if kind != "auto":
            return kind, name, "alias" if request.model in self._config.aliases else kind
        if task is not None and task in self._config.tasks:
            return "tier", self._config.tasks[task], "task"
        rule = self._rule(request)
        if rule is not None:
            return "tier", rule[1], f"rule:{rule[0]}"
        return "tier", self._config.default_tier(), "default"

    def _rule(self, request: ChatRequest) -> tuple[str, str] | None:
        tokens = estimate_input_tokens(request)
        turns = sum(1 for m in request.messages if m.role != "system")
        last_user = next((m.text for m in reversed(request.messages) if m.role == "user"), "")
        for rule in self._config.classifier.rules:
            if rule.min_input_tokens is not None and tokens < rule.min_input_tokens:
                continue
            if rule.max_input_tokens is not None and tokens > rule.max_input_tokens:
                continue
            if rule.has_tools is not None and bool(request.tools) != rule.has_tools:
                continue
            if rule.min_turns is not None and turns < rule.min_turns:
                continue
            pattern = self._patterns.get(rule.name)
            if pattern is not None and not pattern.search(last_user):
                continue
            return rule.name, rule.tier
        return None

    # -- the chain -------------------------------------------------------------------------

    def _ordered(self, tier: TierConfig) -> list[str]:
        out: list[str] = []
        for step in tier.steps:
            if len(step) == 1:
                out.append(step[0][0])
                continue
            names = [n for n, _ in step]
            first = self._rng.choices(names, weights=[w for _, w in step])[0]
            rest = sorted((p for p in step if p[0] != first), key=lambda p: -p[1])
            out.extend([first, *(n for n, _ in rest)])
        return out

    def route(
        self,
        request: ChatRequest,
        *,
        task: str | None = None,
        constraints: Constraints = ANYWHERE,
        drained: frozenset[str] = frozenset(),
        unavailable: Unavailable = _no_outage,
        force_tier: str | None = None,
    ) -> Route:
        """Resolve a request to a route; raises `RoutingError` when nothing may serve it."""
        kind, name, reason = self.decide(request, task)
        if force_tier is not None:
            kind, name, reason = "tier", force_tier, "safe_mode"
        assert name is not None
        config = self._config
        tier: str | None = name if kind == "tier" else None
        candidates = self._ordered(config.tiers[name]) if kind == "tier" else [name]
        estimate = estimate_input_tokens(request)
        chain: list[str] = []
        skipped: list[tuple[str, str]] = []
        kinds: set[str] = set()
        for dep_name in candidates:
            kind_, why = self._excluded(
                dep_name, request, estimate, constraints, drained, unavailable
            )
            if why:
                skipped.append((dep_name, why))
                kinds.add(kind_)
            else:
                chain.append(dep_name)
        chain, over = self._cost_ceiling(chain, request, estimate)
        skipped.extend(over)
        if over:
            kinds.add("cost")
        if over and config.policy.on_cost_ceiling == "recovery":
            safe = config.policy.safe_tier(config.tiers)
            if safe is not None and safe != tier:
                for dep_name in self._ordered(config.tiers[safe]):
                    if dep_name in chain:
                        continue
                    _, why = self._excluded(
                        dep_name, request, estimate, constraints, drained, unavailable
                    )
                    if not why:
                        chain.append(dep_name)
        if not chain:
            raise _no_route(tier, name, skipped, kinds)
        return Route(tier, reason, tuple(chain), tuple(skipped), task, estimate, config.policy)

    def _excluded(
        self,
        name: str,
        request: ChatRequest,
        estimate: int,
        constraints: Constraints,
        drained: frozenset[str],
        unavailable: Unavailable,
    ) -> tuple[str, str]:
        """(kind, why) a deployment cannot serve this request, or ("", "") when it can.

        Kinds: ``unavailable`` (drained, breaker, cooldown: may pass), ``constraint`` (region,
        compliance), ``capability`` and ``size`` (the request itself does not fit)."""
        dep = self._config.deployments[name]
        provider = self._config.providers[dep.provider]
        if name in drained or dep.provider in drained:
            return "unavailable", "drained"
        if constraints.regions is not None and provider.region not in constraints.regions:
            allowed = ", ".join(sorted(constraints.regions))
            return "constraint", f"region {provider.region} is not allowed (only {allowed})"
        missing = constraints.compliance - set(provider.compliance)
        if missing:
            return "constraint", f"lacks compliance {', '.join(sorted(missing))}"
        caps = dep.capabilities
        if request.tools and "tools" not in caps:
            return "capability", "does not support tools"
        if "vision" not in caps and _has_image(request):
            return "capability", "does not support images"
        if request.stream and "streaming" not in caps:
            return "capability", "does not support streaming"
        fmt = (request.response_format or {}).get("type")
        if fmt in ("json_object", "json_schema") and "json" not in caps:
            return "capability", "does not support JSON mode"
        if request.max_tokens is not None and request.max_tokens > dep.max_output_tokens:
            return "size", f"max output {dep.max_output_tokens} < {request.max_tokens} requested"
        needed = estimate + (request.max_tokens or 0)
        if needed > dep.context_window:
            return "size", f"context window {dep.context_window} < ~{needed} tokens needed"
        why = unavailable(name)
        return ("unavailable", why) if why else ("", "")

    def _estimated_cost(
        self, dep: DeploymentConfig, request: ChatRequest, estimate: int
    ) -> float | None:
        if dep.price is None:
            return None
        output = request.max_tokens or _DEFAULT_OUTPUT_ESTIMATE
        return estimate * dep.price.input_per_mtok + output * dep.price.output_per_mtok

    def _cost_ceiling(
        self, chain: list[str], request: ChatRequest, estimate: int
    ) -> tuple[list[str], list[tuple[str, str]]]:
        """Drop fallbacks priced over the ceiling relative to the chain's first deployment.

        An unpriced deployment cannot be compared, so the ceiling does not apply to it (its
        traffic is shown as unpriced instead)."""
        ceiling = self._config.policy.fallback_cost_ceiling
        if ceiling is None or len(chain) < 2:
            return chain, []
        deps = self._config.deployments
        base = self._estimated_cost(deps[chain[0]], request, estimate)
        if not base:
            return chain, []
        kept, over = [chain[0]], []
        for name in chain[1:]:
            cost = self._estimated_cost(deps[name], request, estimate)
            if cost is not None and cost > ceiling * base:
                over.append(
                    (name, f"costs {cost / base:.1f}x the first choice (ceiling {ceiling:g}x)")
                )
            else:
                kept.append(name)
        return kept, over

    def tier_of(self, route: Route) -> TierConfig:
        """The tier whose timeouts govern a route; a pinned deployment uses its first tier."""
        if route.tier is not None:
            return self._config.tiers[route.tier]
        for tier in self._config.tiers.values():
            if route.chain[0] in tier.names:
                return tier
        return TierConfig(deployments=route.chain)


def _no_route(
    tier: str | None, name: str, skipped: list[tuple[str, str]], kinds: set[str]
) -> RoutingError:
    """The error for a request nothing may serve, naming what excluded each candidate.

    When only the request itself is at fault (too long, needs a capability, or constraints no
    deployment meets) it is a 4xx the client must act on; when anything transient took part
    (drains, breakers, cooldowns, the cost ceiling) it is a 503 worth retrying later."""
    reasons = "; ".join(f"{d}: {why}" for d, why in skipped)
    what = f"tier {tier!r}" if tier else f"deployment {name!r}"
    if kinds == {"size"}:
        return RoutingError(
            f"The request is too large for every deployment of {what} ({reasons}). Shorten the "
            "conversation, lower max_tokens, or use a model with a larger context window.",
            status=400,
            code="context_length_exceeded",
        )
    if kinds <= {"size", "capability", "constraint"}:
        return RoutingError(
            f"No deployment of {what} may serve this request ({reasons}). routedeck never "
            "relaxes a constraint to find one: use a model whose deployments qualify.",
            status=400 if "constraint" not in kinds else 403,
            code="no_eligible_deployment",
        )
    return RoutingError(
        f"No deployment can serve this request on {what} right now ({reasons}). Retry later.",
        status=503,
        code="no_deployment",
    )


def _has_image(request: ChatRequest) -> bool:
    return any(isinstance(p, ImagePart) for m in request.messages for p in m.content)


def constraints_from(regions: str | None, compliance: str | None) -> Constraints:
    """Parse the ``x-routedeck-region`` / ``x-routedeck-compliance`` header values."""

    def items(value: str | None) -> frozenset[str]:
        return frozenset(v.strip() for v in (value or "").split(",") if v.strip())

    allowed = items(regions)
    return Constraints(allowed or None, items(compliance))


def tenant_constraints(regions: tuple[str, ...] | None, compliance: tuple[str, ...]) -> Constraints:
    return Constraints(frozenset(regions) if regions is not None else None, frozenset(compliance))
