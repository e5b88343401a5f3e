"""The tier decision: alias, task type, classifier rules, default — each with its reason."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import httpx
import pytest

from engine.config import ConfigError, parse_config
from tests.engine.conftest import TEST_CONFIG, make_config, running

TIERING = """
[tasks]
classification = "low"
rewrite = "low"
extraction = "medium"
rag_answer = "medium"
long_reasoning = "high"

[classifier]
auto_models = ["auto"]
default_tier = "medium"

[[classifier.rules]]
name = "long"
tier = "high"
min_input_tokens = 1000

[[classifier.rules]]
name = "tools"
tier = "medium"
has_tools = true

[[classifier.rules]]
name = "deep"
tier = "high"
min_turns = 6

[[classifier.rules]]
name = "classify"
tier = "low"
pattern = "(?i)^classify"
"""

TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


def msgs(text: str, turns: int = 1) -> list[dict[str, str]]:
    out = []
    for i in range(turns - 1):
        out.append({"role": "user" if i % 2 == 0 else "assistant", "content": f"turn {i}"})
    return [*out, {"role": "user", "content": text}]


CASES: list[tuple[dict[str, object], dict[str, str], str, str]] = [
    ({"model": "gpt-4o-mini"}, {}, "low", "alias"),
    ({"model": "high"}, {}, "high", "tier"),
    ({"model": "gpt-4o-mini"}, {"x-routedeck-task": "long_reasoning"}, "low", "alias"),
    ({"model": "auto"}, {"x-routedeck-task": "classification"}, "low", "task"),
    ({"model": "auto"}, {"x-routedeck-task": "rag_answer"}, "medium", "task"),
    ({"model": "auto", "metadata": {"task": "long_reasoning"}}, {}, "high", "task"),
    ({"model": "auto", "messages": msgs("x " * 3000)}, {}, "high", "rule:long"),
    ({"model": "auto", "tools": [TOOL]}, {}, "medium", "rule:tools"),
    ({"model": "auto", "messages": msgs("go on", turns=7)}, {}, "high", "rule:deep"),
    (
        {"model": "auto", "messages": msgs("Classify this: late invoice")},
        {},
        "low",
        "rule:classify",
    ),
    ({"model": "auto", "messages": msgs("hello")}, {}, "medium", "default"),
    ({"model": "auto"}, {"x-routedeck-task": "unknown_task"}, "medium", "default"),
]


async def test_tier_decisions_and_reasons(tmp_path: Path) -> None:
    async with (
        running(make_config(tmp_path, TIERING)) as p,
        httpx.AsyncClient(base_url=p.url) as http,
    ):
        sent: Counter[tuple[str, str]] = Counter()
        for extra, headers, tier, reason in CASES:
            body = {"messages": msgs("hello"), **extra}
            r = await http.post("/v1/chat/completions", json=body, headers=headers)
            assert r.status_code == 200, (extra, r.text)
            got = (r.headers["x-routedeck-tier"], r.headers["x-routedeck-tier-reason"])
            assert got == (tier, reason), extra
            sent[(tier, reason)] += 1
        # The log holds the same reasons and the task types as sent.
        await p.engine.store.flush()
        rows = await p.engine.store.fetch_requests()
        assert Counter((r.tier, r.tier_reason) for r in rows) == sent
        tasks = Counter(r.task for r in rows if r.task)
        assert tasks == {
            "long_reasoning": 2,
            "classification": 1,
            "rag_answer": 1,
            "unknown_task": 1,
        }
        assert p.engine.snapshot(fresh=True).recent[0].tier_reason == "default"


def problems(extra: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_config(TEST_CONFIG.format(state="/tmp/x.db") + extra)
    return {p.path: p.message for p in info.value.problems}


def test_check_config_rejects_reliability_nonsense() -> None:
    found = problems("[policy]\nretry_budget = -0.5\nmax_attempts = 0\ncooldown_max_s = -1\n")
    assert {"policy.retry_budget", "policy.max_attempts", "policy.cooldown_max_s"} <= set(found)
    found = problems("[policy.breaker]\nerror_rate = 1.5\nopen_s = 0\n")
    assert {"policy.breaker.error_rate", "policy.breaker.open_s"} <= set(found)
    found = problems('[tiers.x]\ndeployments = [{ "a-mini" = 0, "nope" = 1 }]\n')
    assert "weight 0 must be above 0" in found["tiers.x.deployments[0].a-mini"]
    assert "unknown deployment 'nope'" in found["tiers.x.deployments[0].nope"]
    found = problems("[tiers.x]\ndeployments = [{}]\n")
    assert "empty step" in found["tiers.x.deployments[0]"]
    found = problems('[tasks]\nrewrite = "lowest"\n')
    assert "unknown tier 'lowest'" in found["tasks.rewrite"]
    found = problems('[[classifier.rules]]\nname = "r"\ntier = "low"\n')
    assert "has no condition" in found["classifier.rules[0]"]
    found = problems('[[classifier.rules]]\nname = "r"\ntier = "low"\npattern = "("\n')
    assert "not a valid regular expression" in found["classifier.rules[0]"]
    found = problems('[policy]\non_cost_ceiling = "recovery"\n')
    assert "needs a safe-mode tier" in found["policy.on_cost_ceiling"]
    found = problems('[classifier]\nauto_models = ["low"]\n')
    assert "classifier.auto_models" in found
