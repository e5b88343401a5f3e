"""routedeck's configuration: TOML read into frozen pydantic models that reject unknown keys.

`load_config(path)` returns a validated `Config` or raises `ConfigError`, whose ``problems`` list
every problem found, each with the key path (``tiers.low.deployments[1]``), what is wrong and a
hint. Nothing starts on a config with problems. Every key is documented in
``config.example.toml``; the built-in demo config is ``engine/demo.toml``.

Secrets are never part of the config: a provider names the environment variable that holds its
key (``api_key_env``), and the key is read from the environment when the engine starts.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_serializer,
    model_validator,
)

Protocol = Literal["openai", "anthropic"]
Capability = Literal["tools", "json", "vision", "streaming"]
FallbackTrigger = Literal["connect", "timeout", "429", "5xx", "overloaded"]

ALL_CAPABILITIES: frozenset[Capability] = frozenset({"tools", "json", "vision", "streaming"})
CONFIG_ENV = "ROUTEDECK_CONFIG"
DEFAULT_CONFIG_PATH = Path("routedeck.toml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=0, le=65535)
    admin_token_env: str = "ROUTEDECK_ADMIN_TOKEN"
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    snapshot_interval_s: float = Field(default=0.25, gt=0, le=60)
    metrics_window_s: int = Field(default=10, ge=1, le=3600)
    recent_requests: int = Field(default=200, ge=0, le=100_000)
    reuse_port: bool = False
    """Let several ``routedeck serve`` processes listen on the same port (SO_REUSEPORT, Linux):
    the kernel spreads connections over them. They should share one state file."""
    sync_interval_s: float = Field(default=0.5, gt=0, le=60)
    """How often this process checks the state file for changes other processes sharing it
    made (drains, safe mode, keys, releases), refreshes the budgets' spend, and renews the
    lease that lets one process run automatic decisions."""
    require_keys: bool = False
    """Refuse requests without a virtual key. Off: requests without one (or with a key that is
    not a routedeck key, like an SDK placeholder) belong to the tenant "local"."""


class StateConfig(_Section):
    path: str = "routedeck.db"
    """Relative paths are resolved against the config file's directory."""
    flush_interval_ms: float = Field(default=10.0, gt=0, le=10_000)
    flush_max_rows: int = Field(default=512, ge=1, le=1_000_000)


class SimProfileConfig(_Section):
    latency_ms: float = Field(default=120.0, ge=0)
    ttft_ms: float = Field(default=60.0, ge=0)
    tokens_per_s: float = Field(default=150.0, ge=0)
    """0 sends every token at once."""
    jitter: float = Field(default=0.1, ge=0, lt=1)
    context_window: int = Field(default=128_000, ge=1)


class ProviderConfig(_Section):
    protocol: Protocol
    price_provider: str | None = None
    """The provider's id in the genai-prices data ("openai", "anthropic", "groq", ...), used to
    look up prices; by default guessed from the base URL."""
    base_url: str | None = None
    api_key_env: str | None = None
    region: str = "global"
    compliance: tuple[str, ...] = ()
    headers: dict[str, str] = Field(default_factory=dict)
    max_connections: int = Field(default=200, ge=1)
    simulated: SimProfileConfig | None = None
    """Serve this provider from routedeck's in-process simulated upstream instead of base_url."""

    @model_validator(mode="after")
    def _one_endpoint(self) -> ProviderConfig:
        if self.simulated is None and not self.base_url:
            raise ValueError(
                "needs base_url (the upstream endpoint) or a [simulated] table "
                "(serve it from the built-in simulator)"
            )
        if self.simulated is not None and self.base_url:
            raise ValueError("has both base_url and [simulated]; keep one")
        if self.base_url and not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url {self.base_url!r} must start with http:// or https://")
        return self


class PriceConfig(_Section):
    input_per_mtok: float = Field(ge=0)
    """US dollars per million input tokens."""
    output_per_mtok: float = Field(ge=0)
    """US dollars per million output tokens."""
    cached_input_per_mtok: float | None = Field(default=None, ge=0)
    """US dollars per million input tokens read from the provider's prompt cache."""


class DeploymentConfig(_Section):
    provider: str
    model: str
    context_window: int = Field(default=128_000, ge=1)
    max_output_tokens: int = Field(default=4096, ge=1)
    capabilities: frozenset[Capability] = ALL_CAPABILITIES
    price: PriceConfig | None = None
    """Price override. Without one the price comes from the bundled genai-prices data for this
    model; a model found in neither is shown as unpriced, never as $0."""
    p95_slo_ms: float | None = Field(default=None, gt=0)
    """Latency objective: the deployment shows as degraded while its p95 is above it."""

    @field_serializer("capabilities")
    def _sorted_capabilities(self, value: frozenset[str]) -> list[str]:
        return sorted(value)


Step = str | dict[str, float]


class TierConfig(_Section):
    deployments: tuple[Step, ...] = Field(min_length=1)
    """Ordered steps: the first is the route's first choice, the rest are fallbacks in order. A
    step is a deployment name, or an inline table of names with weights (``{ a = 3, b = 1 }``)
    that splits the step's traffic by weight; the step's other deployments become its next
    fallbacks."""
    description: str = ""
    connect_timeout_s: float = Field(default=5.0, gt=0)
    first_token_timeout_s: float | None = Field(default=None, gt=0)
    """Per streaming attempt: the longest wait for the first event (default min(15, timeout_s))."""
    attempt_timeout_s: float | None = Field(default=None, gt=0)
    """Per non-streaming attempt: the longest wait for the answer, so that a hung upstream leaves
    time in the deadline for a fallback (default min(30, timeout_s))."""
    timeout_s: float = Field(default=60.0, gt=0)
    """One deadline for the whole request, every attempt included."""
    max_input_tokens: int | None = Field(default=None, ge=1)
    """Input token cap: a longer request is trimmed or rejected (``on_input_over``)."""
    on_input_over: Literal["trim", "reject"] = "trim"
    """Over the input cap: drop the oldest turns (keeping the system prompt and tool pairs), or
    reject the request with an error saying by how much it is over."""
    summarize_trimmed: bool = False
    """Replace trimmed turns with a short summary written by ``summary_tier`` (cached)."""
    summary_tier: str = "low"
    max_output_tokens: int | None = Field(default=None, ge=1)
    """Output token cap: max_tokens is clamped to it, and set to it when the client sent none."""

    @property
    def steps(self) -> tuple[tuple[tuple[str, float], ...], ...]:
        """Each step as ((deployment, weight), ...); a plain name has weight 1."""
        return tuple(
            ((step, 1.0),) if isinstance(step, str) else tuple(step.items())
            for step in self.deployments
        )

    @property
    def names(self) -> tuple[str, ...]:
        """Every deployment of the tier, in step order."""
        return tuple(name for step in self.steps for name, _ in step)

    @property
    def first_token_s(self) -> float:
        return self.first_token_timeout_s or min(15.0, self.timeout_s)

    @property
    def attempt_s(self) -> float:
        return self.attempt_timeout_s or min(30.0, self.timeout_s)


class BreakerConfig(_Section):
    window_s: int = Field(default=30, ge=1, le=3600)
    """Errors are counted over this many seconds."""
    error_rate: float = Field(default=0.5, gt=0, le=1)
    """Open when this share of the window's attempts failed ..."""
    min_attempts: int = Field(default=10, ge=1)
    """... and the window holds at least this many attempts."""
    consecutive_failures: int = Field(default=5, ge=1)
    """Open after this many failures in a row, whatever the window says."""
    open_s: float = Field(default=15.0, gt=0)
    """How long an open breaker keeps the deployment out before a probe."""
    half_open_probes: int = Field(default=1, ge=1)
    """Requests let through at once to probe a half-open deployment."""


class PolicyConfig(_Section):
    fallback_on: frozenset[FallbackTrigger] = frozenset(
        {"connect", "timeout", "429", "5xx", "overloaded"}
    )
    max_attempts: int = Field(default=3, ge=1, le=10)
    retry_budget: float = Field(default=0.2, ge=0, le=10)
    """Extra attempts (retries and fallbacks) allowed, as a share of recent requests."""
    retry_budget_window_s: int = Field(default=10, ge=1, le=3600)
    retry_budget_floor: int = Field(default=3, ge=0)
    """Extra attempts always allowed per window, so a quiet service can still fall back."""
    same_deployment_retries: int = Field(default=0, ge=0, le=5)
    """Retries on the same deployment, for connect errors and 5xx only, before moving on."""
    backoff_ms: float = Field(default=100.0, ge=0)
    """Base of the jittered exponential backoff between retries on the same deployment."""
    cooldown_max_s: float = Field(default=60.0, ge=0)
    """A 429's Retry-After cools a deployment for that long, at most this long."""
    fallback_cost_ceiling: float | None = Field(default=3.0, gt=0)
    """Refuse a fallback whose estimated cost is over this multiple of the first choice's."""
    on_cost_ceiling: Literal["refuse", "recovery"] = "refuse"
    """Over the ceiling: skip that deployment, or send the request to the safe-mode tier."""
    breaker: BreakerConfig = BreakerConfig()
    safe_mode_tier: str | None = None
    """The tier safe mode sends every request to; default: the tier named "recovery", if any."""

    @field_serializer("fallback_on")
    def _sorted_triggers(self, value: frozenset[str]) -> list[str]:
        # A set has no order; a stored or exported release must not change between processes.
        return sorted(value)

    def safe_tier(self, tiers: Mapping[str, object]) -> str | None:
        if self.safe_mode_tier is not None:
            return self.safe_mode_tier
        return "recovery" if "recovery" in tiers else None


class TenantConfig(_Section):
    """Who pays. Requests without a virtual key belong to the tenant named "local"."""

    regions: tuple[str, ...] | None = None
    """Provider regions this tenant's requests may be served in; None allows any."""
    compliance: tuple[str, ...] = ()
    """Compliance tags every provider serving this tenant must have (e.g. "no-training")."""
    internal: bool = False
    """Internal tenants see a release first, in its "internal" rollout stage."""
    rpm: int | None = Field(default=None, ge=1)
    """Requests per minute; over it requests get a 429 with Retry-After. None: no limit."""
    tpm: int | None = Field(default=None, ge=1)
    """Tokens (input + output) per minute; over it requests get a 429 with Retry-After."""
    daily_budget_usd: float | None = Field(default=None, ge=0)
    """Dollars per UTC day. The worst case of a request is reserved before it is sent."""
    monthly_budget_usd: float | None = Field(default=None, ge=0)
    """Dollars per UTC calendar month."""


class CacheConfig(_Section):
    enabled: bool = True
    mode: Literal["deterministic", "opt_in"] = "deterministic"
    """``deterministic``: cache requests with temperature 0 or a seed, and any that send
    ``x-routedeck-cache: on``; ``opt_in``: only those that send the header."""
    ttl_s: float = Field(default=3600.0, gt=0)
    max_entries: int = Field(default=10_000, ge=1)
    max_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)


class AlertsConfig(_Section):
    budget_thresholds: tuple[float, ...] = (0.5, 0.8, 1.0)
    """Shares of a tenant's daily budget that raise an alert, once each per day."""
    spend_rate_factor: float = Field(default=2.0, gt=1)
    """Alert when this hour's spend is over this multiple of the same hour on trailing days."""
    trailing_days: int = Field(default=7, ge=1, le=90)
    spend_rate_min_usd: float = Field(default=1.0, ge=0)
    """Spend-rate alerts need at least this many dollars spent in the hour."""
    fallback_ratio: float = Field(default=0.2, gt=0, le=1)
    """Alert when the share of requests served by a fallback goes over this."""
    min_requests: int = Field(default=20, ge=1)
    """Fallback-ratio alerts need at least this many requests in the metrics window."""
    webhook_url: str | None = None
    """Alerts are POSTed here as JSON (retried, one delivery per alert per day)."""
    webhook_timeout_s: float = Field(default=5.0, gt=0)
    webhook_retries: int = Field(default=3, ge=0, le=10)


class ReportConfig(_Section):
    low_complexity_max_input_tokens: int = Field(default=1500, ge=1)
    """`routedeck report` flags task types on the strongest tier whose requests average at most
    this many input tokens ..."""
    low_complexity_max_output_tokens: int = Field(default=300, ge=1)
    """... and at most this many output tokens: small work the cheapest tier could do."""


class RetentionConfig(_Section):
    requests_days: float = Field(default=30.0, gt=0)
    """Raw request and attempt rows older than this are deleted once their hour is rolled up
    into hourly aggregates, which reports and spend history go on reading."""
    hourly_days: float = Field(default=400.0, gt=0)
    """Hourly aggregates older than this are deleted."""
    audit_days: float | None = Field(default=None, gt=0)
    """Audit entries older than this are deleted; leave it out to keep the audit log."""
    interval_s: float = Field(default=300.0, gt=0)
    """How often complete hours are rolled up and old rows pruned."""
    grace_s: float = Field(default=900.0, ge=0)
    """An hour is rolled up this long after it ends, so that requests still running at its
    end (logged when they finish) are in it."""


class StageConfig(_Section):
    name: str = Field(min_length=1)
    percent: float = Field(ge=0, le=100)
    """Share of traffic on the candidate at this stage. Tenants marked ``internal`` get the
    candidate at every stage; a 0% stage is theirs alone (skipped when no tenant is internal)."""


class GateConfig(_Section):
    """The candidate passes while its figure is at most baseline * max_ratio + max_delta."""

    max_ratio: float | None = Field(default=None, gt=0)
    max_delta: float | None = Field(default=None, ge=0)
    """In the signal's unit: milliseconds, a share (0.02 = 2 points) or dollars."""
    min_samples: int = Field(default=50, ge=1)
    """Judged requests each arm needs in the stage before the gate can pass or fail."""

    @model_validator(mode="after")
    def _margin(self) -> GateConfig:
        if self.max_ratio is None and self.max_delta is None:
            raise ValueError("a gate needs max_ratio, max_delta or both")
        return self

    def limit(self, baseline: float) -> float:
        return baseline * (self.max_ratio or 1.0) + (self.max_delta or 0.0)


DEFAULT_STAGES = (
    StageConfig(name="internal", percent=0),
    StageConfig(name="canary", percent=1),
    StageConfig(name="5%", percent=5),
    StageConfig(name="20%", percent=20),
    StageConfig(name="full", percent=100),
)


class RolloutConfig(_Section):
    stages: tuple[StageConfig, ...] = Field(default=DEFAULT_STAGES, min_length=2)
    """In order; the last must be 100%: advancing into it promotes the candidate to baseline."""
    on_fail: Literal["halt", "rollback"] = "halt"
    """A failing gate halts the rollout (its traffic returns to the baseline until an operator
    resumes or rolls back) or rolls it back at once."""
    auto_advance: bool = False
    """Advance on its own once every gate has passed for ``dwell_s`` in a stage."""
    dwell_s: float = Field(default=600.0, ge=0)
    """Time in a stage before an automatic advance."""
    latency: GateConfig = GateConfig(max_ratio=1.25, max_delta=50)
    """p95 latency in milliseconds."""
    errors: GateConfig = GateConfig(max_delta=0.02)
    """Error, 429 and timeout rates (each a share of requests; the worst decides)."""
    fallback: GateConfig = GateConfig(max_delta=0.05)
    """Share of successful requests served by a fallback."""
    cost: GateConfig = GateConfig(max_ratio=1.2)
    """Dollars per successful task, failed and fallback attempts included."""


class RuleConfig(_Section):
    """A classifier rule: every condition given must hold; the first rule that matches wins."""

    name: str = Field(min_length=1)
    tier: str
    min_input_tokens: int | None = Field(default=None, ge=0)
    max_input_tokens: int | None = Field(default=None, ge=0)
    has_tools: bool | None = None
    min_turns: int | None = Field(default=None, ge=1)
    """Conversation depth: messages other than system prompts."""
    pattern: str | None = None
    """A regular expression searched in the last user message."""

    @model_validator(mode="after")
    def _valid(self) -> RuleConfig:
        conditions = (
            self.min_input_tokens,
            self.max_input_tokens,
            self.has_tools,
            self.min_turns,
            self.pattern,
        )
        if all(c is None for c in conditions):
            raise ValueError(
                f"rule {self.name!r} has no condition; give min_input_tokens, max_input_tokens, "
                "has_tools, min_turns or pattern"
            )
        if self.pattern is not None:
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ValueError(
                    f"pattern {self.pattern!r} is not a valid regular expression: {exc}"
                ) from None
        return self


class ClassifierConfig(_Section):
    auto_models: tuple[str, ...] = ("auto",)
    """Model names that let routedeck choose the tier: by task type, then rules, then default."""
    default_tier: str | None = None
    """The tier when neither a task type nor a rule decides (default: "medium", else the first)."""
    rules: tuple[RuleConfig, ...] = ()


class Config(_Section):
    server: ServerConfig = ServerConfig()
    state: StateConfig = StateConfig()
    providers: dict[str, ProviderConfig] = Field(min_length=1)
    deployments: dict[str, DeploymentConfig] = Field(min_length=1)
    tiers: dict[str, TierConfig] = Field(min_length=1)
    aliases: dict[str, str] = Field(default_factory=dict)
    """Client-facing model names, each naming a tier or a deployment."""
    tasks: dict[str, str] = Field(default_factory=dict)
    """Task type (``x-routedeck-task`` header or ``metadata.task``) -> tier."""
    classifier: ClassifierConfig = ClassifierConfig()
    tenants: dict[str, TenantConfig] = Field(default_factory=dict)
    policy: PolicyConfig = PolicyConfig()
    cache: CacheConfig = CacheConfig()
    alerts: AlertsConfig = AlertsConfig()
    rollout: RolloutConfig = RolloutConfig()
    retention: RetentionConfig = RetentionConfig()
    report: ReportConfig = ReportConfig()

    source: str = Field(default="<memory>", exclude=True)
    """Where the config came from; set by the loader, not by the file."""
    base_dir: str = Field(default=".", exclude=True)

    def state_path(self) -> Path:
        path = Path(self.state.path)
        return path if path.is_absolute() else Path(self.base_dir) / path

    def default_tier(self) -> str:
        if self.classifier.default_tier is not None:
            return self.classifier.default_tier
        return "medium" if "medium" in self.tiers else next(iter(self.tiers))

    def model_names(self) -> dict[str, str]:
        """Every name a client may send as ``model``, mapped to what it resolves to."""
        names: dict[str, str] = {name: "auto:" for name in self.classifier.auto_models}
        names.update({name: f"tier:{name}" for name in self.tiers})
        names.update({name: f"deployment:{name}" for name in self.deployments})
        for alias, target in self.aliases.items():
            names[alias] = names.get(target, target)
        return names


@dataclass(frozen=True, slots=True)
class Problem:
    path: str
    message: str
    hint: str = ""

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        return f"{text}\n    hint: {self.hint}" if self.hint else text


class ConfigError(Exception):
    """The config cannot be used; ``problems`` says every reason, each with its key path."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        count = f"{len(problems)} problem{'s' if len(problems) != 1 else ''}"
        lines = [f"{source}: {count}"] + [f"  {p}" for p in problems]
        super().__init__("\n".join(lines))


def resolve_config_path(explicit: str | None) -> Path:
    """``--config``, else ``$ROUTEDECK_CONFIG``, else ``./routedeck.toml``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else DEFAULT_CONFIG_PATH


def load_config(path: str | os.PathLike[str]) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            str(path),
            [
                Problem(
                    "",
                    "no config file here",
                    "copy config.example.toml to routedeck.toml and edit it, pass --config FILE, "
                    f"set {CONFIG_ENV}, or try the built-in demo with `routedeck serve --demo`",
                )
            ],
        ) from None
    except OSError as exc:
        raise ConfigError(str(path), [Problem("", f"cannot read it: {exc.strerror}")]) from None
    return parse_config(text, source=str(path), base_dir=str(path.resolve().parent))


def demo_config() -> Config:
    """The built-in demo: simulated providers only, so it runs with no keys and no network."""
    text = resources.files("engine").joinpath("demo.toml").read_text(encoding="utf-8")
    return parse_config(text, source="<built-in demo>", base_dir=os.getcwd())


def parse_config(text: str, *, source: str = "<memory>", base_dir: str = ".") -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            source, [Problem("", f"not valid TOML: {exc}", "fix the syntax at that line")]
        ) from None
    return config_from_data(data, source=source, base_dir=base_dir)


def config_from_data(data: Mapping[str, Any], *, source: str, base_dir: str) -> Config:
    """Validate parsed TOML (or equivalent data) into a `Config`; raises `ConfigError`."""
    try:
        config = Config.model_validate({**data, "source": source, "base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(source, [_problem(err, data) for err in exc.errors()]) from None
    problems = _cross_check(config)
    if problems:
        raise ConfigError(source, problems)
    return config


def _path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _section_model(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The pydantic model whose fields are valid at ``loc``'s parent, for did-you-mean hints."""
    model: type[BaseModel] | None = Config
    i = 0
    parts = loc[:-1]
    while model is not None and i < len(parts):
        field = model.model_fields.get(str(parts[i]))
        if field is None:
            return None
        annotation = field.annotation
        origin = getattr(annotation, "__origin__", None)
        if origin is dict:
            annotation = annotation.__args__[1]  # type: ignore[union-attr]
            i += 1  # skip the table name
        args = getattr(annotation, "__args__", None)
        if args:  # Optional[Model]
            annotation = next((a for a in args if isinstance(a, type)), annotation)
        model = (
            annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel)
            else None
        )
        i += 1
    return model


def _problem(err: Mapping[str, Any], data: Mapping[str, Any]) -> Problem:
    loc = tuple(p for p in err["loc"] if p not in ("function-after[_one_endpoint()]",))
    path = _path(loc)
    kind = err["type"]
    if kind == "extra_forbidden":
        model = _section_model(loc)
        known = [
            n for n in (model.model_fields if model else ()) if n not in ("source", "base_dir")
        ]
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean `{close[0]}`?" if close else ""
        if known:
            hint = (hint + " " if hint else "") + "valid keys here: " + ", ".join(known)
        return Problem(path, "unknown key", hint)
    if kind == "missing":
        return Problem(path, "required key is missing", "add it; config.example.toml documents it")
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return Problem(path, f"{err['input']!r} is not allowed", f"use one of {expected}")
    message = str(err["msg"]).removeprefix("Value error, ")
    return Problem(path, message, "see config.example.toml for this key")


def _cross_check(config: Config) -> list[Problem]:
    """Problems pydantic cannot see: references between sections and name clashes."""
    problems: list[Problem] = []

    def unknown(path: str, kind: str, name: str, known: Mapping[str, Any]) -> None:
        close = difflib.get_close_matches(name, list(known), n=1)
        hint = f"did you mean `{close[0]}`? " if close else ""
        problems.append(
            Problem(path, f"unknown {kind} {name!r}", hint + f"known: {', '.join(sorted(known))}")
        )

    for name, dep in config.deployments.items():
        if dep.provider not in config.providers:
            unknown(f"deployments.{name}.provider", "provider", dep.provider, config.providers)
    for name, tier in config.tiers.items():
        seen: set[str] = set()
        for i, step in enumerate(tier.steps):
            where = f"tiers.{name}.deployments[{i}]"
            if isinstance(tier.deployments[i], dict) and not step:
                problems.append(Problem(where, "is an empty step", "name at least one deployment"))
            for dep_name, weight in step:
                path = (
                    where
                    if len(step) == 1 and isinstance(tier.deployments[i], str)
                    else f"{where}.{dep_name}"
                )
                if dep_name not in config.deployments:
                    unknown(path, "deployment", dep_name, config.deployments)
                elif dep_name in seen:
                    problems.append(
                        Problem(
                            path,
                            f"{dep_name!r} is listed twice",
                            "list each deployment once, in fallback order",
                        )
                    )
                if weight <= 0:
                    problems.append(
                        Problem(path, f"weight {weight:g} must be above 0", "use a positive weight")
                    )
                seen.add(dep_name)
        for key in ("first_token_timeout_s", "attempt_timeout_s"):
            value = getattr(tier, key)
            if value is not None and value > tier.timeout_s:
                problems.append(
                    Problem(
                        f"tiers.{name}.{key}",
                        "is longer than timeout_s, the deadline for the whole request",
                        f"make {key} <= timeout_s",
                    )
                )
    safe = config.policy.safe_mode_tier
    if safe is not None and safe not in config.tiers:
        unknown("policy.safe_mode_tier", "tier", safe, config.tiers)
    if (
        config.policy.on_cost_ceiling == "recovery"
        and config.policy.safe_tier(config.tiers) is None
    ):
        problems.append(
            Problem(
                "policy.on_cost_ceiling",
                '"recovery" needs a safe-mode tier',
                'define [tiers.recovery] or set policy.safe_mode_tier, or use "refuse"',
            )
        )
    for name, tier in config.tiers.items():
        if tier.summarize_trimmed and tier.summary_tier not in config.tiers:
            unknown(f"tiers.{name}.summary_tier", "tier", tier.summary_tier, config.tiers)
    for i, share in enumerate(config.alerts.budget_thresholds):
        if not 0 < share <= 10:
            problems.append(
                Problem(
                    f"alerts.budget_thresholds[{i}]",
                    f"{share} is not a share of a budget",
                    "use values like 0.5, 0.8 and 1.0",
                )
            )
    stages = config.rollout.stages
    names = [stage.name for stage in stages]
    for i, stage in enumerate(stages):
        if names.index(stage.name) != i:
            problems.append(
                Problem(f"rollout.stages[{i}].name", f"{stage.name!r} is used twice", "")
            )
        if i and stage.percent < stages[i - 1].percent:
            problems.append(
                Problem(
                    f"rollout.stages[{i}].percent",
                    f"{stage.percent:g}% is less than the stage before it",
                    "a rollout only widens: give stages rising percentages",
                )
            )
    if stages[-1].percent != 100:
        problems.append(
            Problem(
                f"rollout.stages[{len(stages) - 1}].percent",
                "the last stage must be 100%",
                'end with { name = "full", percent = 100 }: reaching it promotes the release',
            )
        )
    hook = config.alerts.webhook_url
    if hook is not None and not hook.startswith(("http://", "https://")):
        problems.append(
            Problem(
                "alerts.webhook_url",
                f"{hook!r} is not an http(s) URL",
                "use a URL like https://hooks.example/routedeck",
            )
        )
    for task, tier_name in config.tasks.items():
        if tier_name not in config.tiers:
            unknown(f"tasks.{task}", "tier", tier_name, config.tiers)
    default = config.classifier.default_tier
    if default is not None and default not in config.tiers:
        unknown("classifier.default_tier", "tier", default, config.tiers)
    for i, rule in enumerate(config.classifier.rules):
        if rule.tier not in config.tiers:
            unknown(f"classifier.rules[{i}].tier", "tier", rule.tier, config.tiers)
    names = [r.name for r in config.classifier.rules]
    for i, rule in enumerate(config.classifier.rules):
        if names.index(rule.name) != i:
            problems.append(
                Problem(
                    f"classifier.rules[{i}].name",
                    f"{rule.name!r} is used twice",
                    "give every rule its own name; it is the reason in headers",
                )
            )
    for auto in config.classifier.auto_models:
        if auto in config.tiers or auto in config.deployments or auto in config.aliases:
            problems.append(
                Problem(
                    "classifier.auto_models",
                    f"{auto!r} is also a tier, deployment or alias",
                    "a model name must mean one thing",
                )
            )
    clash = set(config.tiers) & set(config.deployments)
    for name in sorted(clash):
        problems.append(
            Problem(
                f"deployments.{name}",
                f"{name!r} is also a tier name",
                "a model name must mean one thing: rename the tier or the deployment",
            )
        )
    targets = {**config.tiers, **config.deployments}
    for alias, target in config.aliases.items():
        if alias in targets:
            problems.append(
                Problem(
                    f"aliases.{alias}",
                    f"{alias!r} is already a tier or deployment name",
                    "remove the alias; that name already works as a model name",
                )
            )
        elif target not in targets:
            unknown(f"aliases.{alias}", "tier or deployment", target, targets)
    for name, provider in config.providers.items():
        if provider.simulated is not None and provider.api_key_env:
            problems.append(
                Problem(
                    f"providers.{name}.api_key_env",
                    "a simulated provider takes no key",
                    "remove api_key_env, or replace [simulated] with a real base_url",
                )
            )
    return problems


def missing_secrets(config: Config, environ: Mapping[str, str] | None = None) -> list[Problem]:
    """Providers whose key variable is unset: a warning at start, a problem for check-config."""
    env = os.environ if environ is None else environ
    return [
        Problem(
            f"providers.{name}.api_key_env",
            f"environment variable {p.api_key_env} is not set",
            f"export {p.api_key_env}=... before starting; requests to {name} will fail auth",
        )
        for name, p in config.providers.items()
        if p.api_key_env and not env.get(p.api_key_env)
    ]
