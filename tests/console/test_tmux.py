"""The real `routedeck` commands in a real terminal (tmux): keys in, screen out.

These run the installed entry point as a user would — `routedeck demo`, and `routedeck console
--attach` against a separate `routedeck serve --demo` process — and read the screen with
`tmux capture-pane`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")

ROUTEDECK = [sys.executable, "-m", "console.cli"]


class Terminal:
    def __init__(
        self, name: str, command: list[str], *, cwd: Path, width: int, height: int
    ) -> None:
        self.name = name
        env = {**os.environ, "TERM": "xterm-256color", "COLORTERM": "truecolor"}
        subprocess.run(
            [
                "tmux",
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                str(width),
                "-y",
                str(height),
                "-c",
                str(cwd),
                " ".join(command),
            ],
            check=True,
            env=env,
        )

    def screen(self) -> str:
        out = subprocess.run(
            ["tmux", "capture-pane", "-p", "-t", self.name], capture_output=True, text=True
        )
        return out.stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def wait_for(self, check: Callable[[str], bool], what: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        screen = ""
        while time.monotonic() < deadline:
            screen = self.screen()
            if check(screen):
                return screen
            time.sleep(0.1)
        raise AssertionError(f"timed out waiting for {what}; the screen was:\n{screen}")

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


@pytest.fixture
def terminals() -> Iterator[list[Terminal]]:
    opened: list[Terminal] = []
    yield opened
    for t in opened:
        t.close()


def row(screen: str, name: str) -> str:
    return next((line for line in screen.splitlines() if f" {name} " in line), "")


def rps(screen: str) -> float:
    match = re.search(r"([\d.]+) req/s", screen)
    return float(match.group(1)) if match else 0.0


def test_demo_moves_and_a_drill_shows_up(tmp_path: Path, terminals: list[Terminal]) -> None:
    term = Terminal(
        f"rd-demo-{os.getpid()}",
        [*ROUTEDECK, "demo", "--port", "0", "--rate", "25"],
        cwd=tmp_path,
        width=160,
        height=48,
    )
    terminals.append(term)
    screen = term.wait_for(lambda s: rps(s) > 0 and "sim-fast" in s, "traffic in the header")
    assert "providers" in screen and "tiers" in screen and "fallback" in screen
    term.wait_for(lambda s: "● healthy" in row(s, "sim-fast"), "sim-fast healthy")

    term.keys("1")  # the error-storm drill on the selected row: sim-fast, the first provider
    screen = term.wait_for(
        lambda s: any(w in row(s, "sim-fast") for w in ("✖ down", "▲ degraded")),
        "sim-fast to turn degraded or down",
    )
    term.wait_for(lambda s: re.search(r"causes: .*5xx", s) is not None, "fallbacks by cause")

    term.keys("0")  # heal
    term.keys("q")
    term.wait_for(lambda s: "Quit" in s or "quit" in s.lower(), "the quit confirmation")


def _serve_demo(tmp_path: Path) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen(
        [*ROUTEDECK, "serve", "--demo", "--port", "0"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if "routedeck listening on " in line:
            return proc, line.rsplit(" ", 1)[-1].strip()
    raise AssertionError("routedeck serve did not start")


def test_attach_shows_the_remote_engine_and_drains_it(
    tmp_path: Path, terminals: list[Terminal]
) -> None:
    proc, url = _serve_demo(tmp_path)
    try:
        term = Terminal(
            f"rd-attach-{os.getpid()}",
            [*ROUTEDECK, "console", "--attach", url],
            cwd=tmp_path,
            width=160,
            height=48,
        )
        terminals.append(term)
        screen = term.wait_for(
            lambda s: "sim-fast" in s and "ATTACHED" in s, "the attached console"
        )
        assert url.removeprefix("http://") in screen
        term.keys("d")
        term.wait_for(lambda s: "drains sim-fast" in s, "the drain confirmation")
        term.keys("Tab", "Enter")  # focus starts on Cancel; move to Confirm
        term.wait_for(lambda s: "⏸ drained" in row(s, "sim-fast"), "sim-fast drained on screen")
        with urllib.request.urlopen(url + "/admin/snapshot") as response:
            snapshot = json.load(response)
        assert snapshot["drained"] == ["sim-fast"]
        assert snapshot["audit"][0]["actor"] == "console"
    finally:
        proc.terminate()
        proc.wait(20)
