"""Config loading: valid configs load, every problem is reported with its key path and a hint."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from console.cli import main
from engine.config import (
    Config,
    ConfigError,
    demo_config,
    load_config,
    missing_secrets,
    parse_config,
    resolve_config_path,
)

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "config.example.toml"

MINIMAL = """
[providers.p]
protocol = "openai"
base_url = "http://127.0.0.1:9/v1"
[deployments.d]
provider = "p"
model = "m"
[tiers.low]
deployments = ["d"]
"""


def problems(text: str) -> dict[str, str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return {p.path: f"{p.message} | {p.hint}" for p in info.value.problems}


def test_example_and_demo_configs_are_valid() -> None:
    example = load_config(EXAMPLE)
    assert {"openai", "anthropic", "local"} <= set(example.providers)
    assert example.providers["local"].base_url == "http://127.0.0.1:8000/v1"
    demo = demo_config()
    assert set(demo.tiers) == {"low", "medium", "high", "recovery"}
    assert all(p.simulated is not None for p in demo.providers.values())
    assert len({p.protocol for p in demo.providers.values()}) == 2


def _fields(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[str]:
    names: set[str] = set()
    seen.add(model)
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        names.add(name)
        stack = [field.annotation]
        while stack:
            ann = stack.pop()
            if isinstance(ann, type) and issubclass(ann, BaseModel) and ann not in seen:
                names |= _fields(ann, seen)
            stack.extend(getattr(ann, "__args__", ()))
    return names


def test_example_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    undocumented = sorted(k for k in _fields(Config, set()) if not re.search(rf"\b{k}\b", text))
    assert undocumented == []


def test_unknown_key_gets_path_and_did_you_mean() -> None:
    found = problems(MINIMAL + "[server]\nprot = 1\n")
    assert "server.prot" in found
    assert "did you mean `port`?" in found["server.prot"]


def test_bad_values_are_reported_together() -> None:
    text = """
[providers.a]
protocol = "openapi"
base_url = "http://x"
[providers.b]
protocol = "openai"
[deployments.d]
provider = "a"
model = "m"
[tiers.low]
deployments = ["d"]
"""
    found = problems(text)
    assert "providers.a.protocol" in found and "'openai'" in found["providers.a.protocol"]
    assert "providers.b" in found and "base_url" in found["providers.b"]


def test_cross_references_are_checked() -> None:
    text = (
        MINIMAL
        + """
[deployments.e]
provider = "nope"
model = "m"
[tiers.high]
deployments = ["d", "dd", "d"]
[aliases]
fast = "lowe"
low = "d"
"""
    )
    found = problems(text)
    assert "unknown provider 'nope'" in found["deployments.e.provider"]
    assert "unknown deployment 'dd'" in found["tiers.high.deployments[1]"]
    assert "listed twice" in found["tiers.high.deployments[2]"]
    assert "did you mean `low`?" in found["aliases.fast"]
    assert "already a tier or deployment" in found["aliases.low"]


def test_nonsense_numbers_are_rejected() -> None:
    found = problems(MINIMAL.replace('deployments = ["d"]', 'deployments = ["d"]\ntimeout_s = -1'))
    assert "tiers.low.timeout_s" in found
    found = problems(MINIMAL + "[policy]\nmax_attempts = 0\n")
    assert "policy.max_attempts" in found


def test_toml_syntax_error() -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config("[server\nport = 1")


def test_missing_file_says_what_to_do(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "routedeck.toml")
    assert "config.example.toml" in str(info.value)
    assert "--demo" in str(info.value)


def test_config_path_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ROUTEDECK_CONFIG", raising=False)
    assert resolve_config_path(None) == Path("routedeck.toml")
    monkeypatch.setenv("ROUTEDECK_CONFIG", "/etc/rd.toml")
    assert resolve_config_path(None) == Path("/etc/rd.toml")
    assert resolve_config_path("x.toml") == Path("x.toml")


def test_state_path_is_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "rd.toml").write_text(MINIMAL + '[state]\npath = "data/rd.db"\n')
    config = load_config(tmp_path / "rd.toml")
    assert config.state_path() == tmp_path / "data" / "rd.db"


def test_missing_secrets_are_named_without_values() -> None:
    config = parse_config(
        MINIMAL.replace('protocol = "openai"', 'protocol = "openai"\napi_key_env = "RD_TEST_KEY"')
    )
    assert [p.path for p in missing_secrets(config, {})] == ["providers.p.api_key_env"]
    assert missing_secrets(config, {"RD_TEST_KEY": "sk-secret"}) == []


def test_check_config_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text(MINIMAL)
    assert main(["check-config", "--config", str(good)]) == 0
    assert "ok" in capsys.readouterr().out

    bad = tmp_path / "bad.toml"
    bad.write_text(MINIMAL + "[tiers.high]\ndeployments = ['x']\n")
    assert main(["check-config", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "tiers.high.deployments[0]: unknown deployment 'x'" in err
    assert "hint:" in err


def test_check_config_strict_fails_on_unset_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("RD_TEST_KEY", raising=False)
    path = tmp_path / "rd.toml"
    path.write_text(
        MINIMAL.replace('protocol = "openai"', 'protocol = "openai"\napi_key_env = "RD_TEST_KEY"')
    )
    assert main(["check-config", "--config", str(path)]) == 0
    assert main(["check-config", "--strict", "--config", str(path)]) == 1
    assert "RD_TEST_KEY is not set" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], ["console"]),
        (["--read-only"], ["console", "--read-only"]),
        (["--log-level", "debug"], ["--log-level", "debug", "console"]),
        (
            ["--log-level", "warning", "serve", "--demo"],
            ["--log-level", "warning", "serve", "--demo"],
        ),
        (["--config", "x.toml"], ["console", "--config", "x.toml"]),
        (["-h"], ["-h"]),
    ],
)
def test_the_console_is_the_default_verb(argv: list[str], expected: list[str]) -> None:
    from console.cli import _default_to_console

    assert _default_to_console(argv) == expected
