"""`routedeck serve --demo` as a real process: the SDKs against it, and a graceful stop."""

from __future__ import annotations

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
