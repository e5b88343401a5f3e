"""`routedeck serve --demo` as a real process: the SDKs against it, and a graceful stop."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import openai
import pytest


def _wait_for_url(proc: subprocess.Popen[str], deadline_s: float = 30.0) -> str:
    assert proc.stderr is not None
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        line = proc.stderr.readline()
        if not line:
            break
        if "routedeck listening on " in line:
            return line.rsplit(" ", 1)[-1].strip()
    raise AssertionError(f"routedeck serve did not start (exit code {proc.poll()})")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[str], Path]]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "console.cli", "serve", "--demo", "--port", "0"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        yield _wait_for_url(proc), proc, tmp_path
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def test_sdks_against_serve_demo(demo: tuple[str, subprocess.Popen[str], Path]) -> None:
    url, _, _ = demo
    with openai.OpenAI(base_url=url + "/v1", api_key="local", max_retries=0) as oai:
        completion = oai.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "Rewrite: hello"}]
        )
        assert completion.choices[0].message.content
        stream = oai.chat.completions.create(
            model="claude-sonnet", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices).strip()
    with anthropic.Anthropic(base_url=url, api_key="local", max_retries=0) as claude:
        message = claude.messages.create(
            model="claude-haiku", max_tokens=100, messages=[{"role": "user", "content": "hi"}]
        )
        assert message.content[0].type == "text" and message.content[0].text
        with claude.messages.stream(
            model="o3", max_tokens=50, messages=[{"role": "user", "content": "think"}]
        ) as stream:
            assert "".join(stream.text_stream).strip()


def test_sigterm_finishes_in_flight_requests_and_flushes_state(
    demo: tuple[str, subprocess.Popen[str], Path],
) -> None:
    url, proc, cwd = demo
    with httpx.Client(base_url=url, timeout=30) as http:
        # The strong tier takes ~600 ms: long enough to still be in flight when the signal lands.
        import threading

        result: dict[str, httpx.Response] = {}
        thread = threading.Thread(
            target=lambda: result.setdefault(
                "r",
                http.post(
                    "/v1/chat/completions",
                    json={"model": "o3", "messages": [{"role": "user", "content": "x"}]},
                ),
            )
        )
        thread.start()
        end = time.monotonic() + 10
        with httpx.Client(base_url=url, timeout=5) as admin:
            while time.monotonic() < end:
                snap = admin.get("/admin/snapshot").json()
                if any(d["in_flight"] for d in snap["deployments"]):
                    break
            else:
                raise AssertionError("the request never showed as in flight")
        proc.send_signal(signal.SIGTERM)
        thread.join(30)
    assert result["r"].status_code == 200
    assert result["r"].json()["choices"][0]["message"]["content"]
    assert proc.wait(30) == 0
    assert proc.stderr is not None
    assert "state flushed" in proc.stderr.read()
    with sqlite3.connect(cwd / "routedeck-demo.db") as db:
        rows = db.execute("SELECT tier, deployment, outcome FROM requests").fetchall()
        attempts = db.execute("SELECT count(*) FROM attempts").fetchone()[0]
    assert rows == [("high", "strong-large", "ok")]
    assert attempts == 1


def test_operator_cli_changes_a_running_engine(
    demo: tuple[str, subprocess.Popen[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from console.cli import main

    url, _, _ = demo
    assert main(["drain", "sim-fast", "--url", url, "--reason", "drill", "--actor", "ops"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("drains sim-fast: tier low moves to local-llama")
    assert "(audit #" in out
    with httpx.Client(base_url=url) as http:
        r = http.post(
            "/v1/chat/completions",
            json={"model": "low", "messages": [{"role": "user", "content": "x"}]},
        )
        assert r.headers["x-routedeck-deployment"] == "local-llama"
        entries = http.get("/admin/audit").json()["entries"]
    assert [(e["actor"], e["action"], e["target"], e["detail"]["reason"]) for e in entries] == [
        ("ops", "drain", "sim-fast", "drill")
    ]
    assert main(["drain", "sim-fast", "--url", url]) == 1
    assert "refused: sim-fast is already drained" in capsys.readouterr().err
    assert main(["safe-mode", "on", "--url", url]) == 0
    assert "every request goes to tier recovery" in capsys.readouterr().out
    assert main(["undrain", "sim-fast", "--url", "http://127.0.0.1:9"]) == 1
    assert "cannot reach routedeck" in capsys.readouterr().err


def test_rollout_cli_steps_a_release_on_a_running_engine(
    demo: tuple[str, subprocess.Popen[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from console.cli import main
    from engine.config import parse_config

    url, _, cwd = demo
    ops = ["--url", url, "--actor", "ops"]
    assert main(["rollout", "status", *ops]) == 0
    assert "no rollout in progress" in capsys.readouterr().out

    # A release from a TOML file: each section it has replaces the baseline's whole section.
    candidate = cwd / "candidate.toml"
    candidate.write_text('[tiers.low]\ndeployments = ["local-llama", "fast-mini"]\n')
    assert main(["rollout", "start", "--config", str(candidate), "--note", "low local", *ops]) == 1
    err = capsys.readouterr().err  # without [tiers.medium], which the demo's aliases name
    assert "refused: not a valid release" in err and "unknown tier or deployment 'medium'" in err
    assert (
        main(["rollout", "edit", "low", "local-llama > fast-mini", "--note", "cheaper", *ops]) == 0
    )
    out = capsys.readouterr().out
    assert out.startswith("starts a new release at stage canary (10%)")
    assert "started r2 at stage canary" in out and "internal skipped" in out

    assert main(["rollout", "status", *ops]) == 0
    out = capsys.readouterr().out
    assert "rollout: r2 against r1 — RUNNING" in out
    assert "[canary (10%)]" in out and "tiers.low: fast-mini > local-llama > balanced-sonnet" in out
    assert main(["rollout", "status", "--json", *ops]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["rollout"]["stage"] == "canary" and body["releases"][0]["id"] == 2

    # Gates are waiting for data: advancing needs an override, a reason and the typed word.
    assert main(["rollout", "advance", *ops]) == 1
    assert "gates do not pass" in capsys.readouterr().err
    assert main(["rollout", "advance", "--override", *ops]) == 2
    assert "needs a reason" in capsys.readouterr().err
    assert main(["rollout", "advance", "--override", "--reason", "demo", *ops]) == 1
    assert "pass --confirm override" in capsys.readouterr().err
    args = ["rollout", "advance", "--override", "--reason", "demo", "--confirm", "override"]
    assert main([*args, *ops]) == 0
    assert "advanced r2 to 25% (25%) with an override" in capsys.readouterr().out

    assert main(["rollout", "rollback", "--reason", "enough", *ops]) == 0
    assert "rolled back r2 at 25%" in capsys.readouterr().out

    emergency = ["rollout", "edit", "low", "local-llama", "--emergency", "--reason", "INC-1"]
    assert main([*emergency, "--confirm", "emergency", *ops]) == 0
    assert "emergency: r3 replaces r1" in capsys.readouterr().out
    with httpx.Client(base_url=url) as http:
        r = http.post(
            "/v1/chat/completions",
            json={"model": "low", "messages": [{"role": "user", "content": "x"}]},
        )
        assert (r.headers["x-routedeck-deployment"], r.headers["x-routedeck-release"]) == (
            "local-llama",
            "r3",
        )
        actions = [
            (e["actor"], e["action"], e["target"])
            for e in http.get("/admin/audit").json()["entries"]
        ]
    # Refused at the preview, the first advances were never submitted.
    assert actions[-4:] == [
        ("ops", "rollout_start", "r2"),
        ("ops", "advance", "r2"),
        ("ops", "rollback", "r2"),
        ("ops", "emergency_change", "r3"),
    ]

    out_file = cwd / "exported.toml"
    assert main(["rollout", "export", "--out", str(out_file), *ops]) == 0
    exported = parse_config(out_file.read_text())
    assert exported.tiers["low"].deployments == ("local-llama",)
    assert exported.tiers["medium"].deployments == ("balanced-sonnet", "fast-mini")


def test_audit_cli_tails_and_searches_a_running_engine(
    demo: tuple[str, subprocess.Popen[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    from console.cli import main

    url, _, _ = demo
    assert (
        main(["drain", "sim-fast", "--url", url, "--reason", "INC-9 drill", "--actor", "ana"]) == 0
    )
    assert main(["undrain", "sim-fast", "--url", url, "--actor", "bo"]) == 0
    assert main(["drain", "nope", "--url", url, "--actor", "bo"]) == 1
    capsys.readouterr()

    assert main(["audit", "--url", url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3
    assert "ana: drain sim-fast (applied)" in lines[0] and "reason: INC-9 drill" in lines[0]
    assert "[" in lines[0] and "→" in lines[0]  # before → after
    assert "bo: drain nope (refused)" in lines[2]

    assert main(["audit", "--url", url, "--actor", "bo", "--json"]) == 0
    entries = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["action"], e["result"]) for e in entries] == [
        ("undrain", "applied"),
        ("drain", "refused"),
    ]
    assert main(["audit", "--url", url, "--grep", "inc-9"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 1
    assert main(["audit", "--url", url, "--result", "refused", "--since", "1h"]) == 0
    assert "drain nope" in capsys.readouterr().out
    assert main(["audit", "--url", url, "--since", "soon"]) == 2
    assert "--since takes a span" in capsys.readouterr().err
