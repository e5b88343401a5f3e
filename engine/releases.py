"""Releases: versioned routing configurations, and the text forms operators read and write.

A release is the routing part of a config — the sections in `ROUTING_SECTIONS` (tiers,
aliases, task map, classifier rules, policy) — applied to the running engine's providers,
deployments and tenants, which a release cannot change. This module holds the pure parts:

- `routing_of` / `with_routing`: a config's routing as plain data, and a config with another
  routing, validated exactly like a config file (every problem at once, with key paths).
- `routing_from_toml`: a candidate's routing from a TOML file (a whole config or just its
  routing sections).
- `diff_routing`: one line per change, as confirmations, the audit log and the console show it.
- `format_mapping` / `parse_mapping`: a tier's steps in the console editor's one-line syntax,
  ``a > b=3 + c=1 > d``.
- `export_toml`: the config with a release's routing, written back as TOML with tomli-w.

The engine-wide parts of ``[policy]`` (breaker thresholds, the retry budget, the 429 cool-down
cap) belong to the process, not to an arm: a release that changes them is refused with a hint
to change the config file and restart.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from collections.abc import Mapping
from typing import Any

import tomli_w

from engine.config import Config, ConfigError, Problem, Step, TierConfig, config_from_data

ROUTING_SECTIONS: tuple[str, ...] = ("tiers", "aliases", "tasks", "classifier", "policy")
ENGINE_WIDE_POLICY: tuple[str, ...] = (
    "breaker",
    "retry_budget",
    "retry_budget_window_s",
    "retry_budget_floor",
    "cooldown_max_s",
)

Routing = dict[str, Any]


def routing_of(config: Config) -> Routing:
    """The routing sections as JSON-ready data, every value explicit (defaults included), so a
    stored release means the same thing whatever later versions take as defaults."""
    data: Routing = _drop_none(config.model_dump(mode="json", include=set(ROUTING_SECTIONS)))
    return data


def _drop_none(value: Any) -> Any:
    # TOML has no null; an unset optional key is simply absent.
    if isinstance(value, dict):
        return {k: _drop_none(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [_drop_none(v) for v in value]
    return value


def with_routing(config: Config, routing: Mapping[str, Any], *, source: str) -> Config:
    """``config`` with ``routing`` in place of its own; raises `ConfigError` with every problem.

    Validated as a config file is (unknown keys, types, references between sections), plus the
    release's own rule: the engine-wide policy keys must not change."""
    base = config.model_dump(mode="json", exclude=set(ROUTING_SECTIONS))
    data = {**_drop_none(base), **{k: v for k, v in routing.items() if k in ROUTING_SECTIONS}}
    unknown = [k for k in routing if k not in ROUTING_SECTIONS]
    problems = [
        Problem(
            key,
            "is not part of a release",
            f"a release holds {', '.join(ROUTING_SECTIONS)}; change {key} in the config file",
        )
        for key in unknown
    ]
    try:
        result = config_from_data(data, source=source, base_dir=config.base_dir)
    except ConfigError as exc:
        raise ConfigError(source, problems + exc.problems) from None
    for key in ENGINE_WIDE_POLICY:
        if getattr(result.policy, key) != getattr(config.policy, key):
            problems.append(
                Problem(
                    f"policy.{key}",
                    "is engine-wide and cannot change in a release",
                    "change it in the config file and restart routedeck",
                )
            )
    if problems:
        raise ConfigError(source, problems)
    return result


def routing_from_toml(text: str, config: Config, *, source: str) -> Routing:
    """``config``'s routing with the routing sections a TOML file has (a whole config file or
    just some sections): each section in the file replaces ``config``'s, the others stay.

    Sections other than routing are not part of a release and are not used; a deployment the
    file defines but the running config does not is pointed out, since a release cannot add it.
    Raises `ConfigError`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(
            source, [Problem("", f"not valid TOML: {exc}", "fix the syntax at that line")]
        ) from None
    known = set(Config.model_fields) - {"source", "base_dir"}
    problems = []
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(key, sorted(known), n=1)
            hint = f"did you mean `{close[0]}`? " if close else ""
            problems.append(Problem(key, "unknown key", hint + "releases use " + _sections()))
    sections = {k: v for k, v in data.items() if k in ROUTING_SECTIONS}
    if not sections and not problems:
        problems.append(
            Problem("", "has no routing section", f"a release needs one of {_sections()}")
        )
    if problems:
        raise ConfigError(source, problems)
    new_deployments = sorted(set(data.get("deployments") or ()) - set(config.deployments))
    routing = {**routing_of(config), **sections}
    try:
        with_routing(config, routing, source=source)
    except ConfigError as exc:
        if new_deployments:
            exc.problems.append(
                Problem(
                    "deployments",
                    f"{', '.join(new_deployments)} defined in the file but not in the running "
                    "config",
                    "a release changes routing only: add new deployments to the engine's config "
                    "file and restart it, then start the rollout",
                )
            )
            raise ConfigError(source, exc.problems) from None
        raise
    return routing


def _sections() -> str:
    return ", ".join(f"[{s}]" for s in ROUTING_SECTIONS)


# -- the tier mapping's one-line form ------------------------------------------------------


def format_mapping(tier: TierConfig) -> str:
    """``a > b=3 + c=1 > d``: steps in fallback order; a weighted step's members joined by +."""
    parts = []
    for raw, step in zip(tier.deployments, tier.steps, strict=True):
        if isinstance(raw, str):
            parts.append(raw)
        else:
            parts.append(" + ".join(f"{name}={weight:g}" for name, weight in step))
    return " > ".join(parts)


def parse_mapping(text: str) -> list[Step]:
    """The steps of ``a > b=3 + c=1 > d``; raises ValueError saying what is wrong."""
    steps: list[Step] = []
    if not text.strip():
        raise ValueError("the mapping is empty: name at least one deployment, like `a > b`")
    for i, raw in enumerate(text.split(">"), start=1):
        members = [m.strip() for m in raw.split("+")]
        if any(not m for m in members):
            raise ValueError(
                f"step {i} of {text!r} is empty: write deployments separated by `>` "
                "(fallback order) or `+` (a weighted split), like `a > b=3 + c=1`"
            )
        if len(members) == 1 and "=" not in members[0]:
            steps.append(members[0])
            continue
        weights: dict[str, float] = {}
        for member in members:
            name, _, weight = member.partition("=")
            name = name.strip()
            try:
                value = float(weight) if weight.strip() else 1.0
            except ValueError:
                raise ValueError(
                    f"{member!r}: the weight after `=` must be a number, like `{name}=3`"
                ) from None
            if name in weights:
                raise ValueError(f"{name!r} appears twice in step {i}")
            weights[name] = value
        steps.append(weights)
    return steps


# -- diffs -----------------------------------------------------------------------------------


def diff_routing(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """One line per changed key: ``tiers.low: a > b → b > a``, ``+ aliases.fast = "low"``."""
    before, after = _flatten(old), _flatten(new)
    lines = []
    for key in sorted(before.keys() | after.keys()):
        if key not in after:
            lines.append(f"- {key} = {before[key]}")
        elif key not in before:
            lines.append(f"+ {key} = {after[key]}")
        elif before[key] != after[key]:
            lines.append(f"{key}: {before[key]} → {after[key]}")
    return lines


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if prefix.startswith("tiers.") and prefix.count(".") == 1 and key == "deployments":
            out[prefix] = format_mapping(TierConfig(deployments=tuple(value)))
        elif isinstance(value, dict):
            out.update(_flatten(value, path))  # an empty table adds nothing to compare
        else:
            out[path] = json.dumps(value, ensure_ascii=False)
    return out


# -- export ----------------------------------------------------------------------------------


def export_toml(config: Config, *, header: str = "", routing_only: bool = False) -> str:
    """The config as TOML (tomli-w), defaults left out; ``routing_only`` keeps just the routing
    sections. Comments do not survive: ``header`` is written as a comment block on top."""
    data = config.model_dump(mode="json", exclude_defaults=True)
    data = _drop_none(data)
    if routing_only:
        data = {k: v for k, v in data.items() if k in ROUTING_SECTIONS}
    comment = "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines())
    return comment + ("\n" if comment else "") + tomli_w.dumps(data)
