"""``routedeck serve`` with cProfile switched on and off by signals (used by bench/profile_proxy.py).

    python bench/profiled_serve.py DUMP_DIR serve --config FILE --port 0

SIGUSR1 starts profiling the event-loop thread (the main thread, where every request is
handled); SIGUSR2 stops it and writes ``DUMP_DIR/<n>.prof`` for n = 1, 2, ... (renamed into
place, so a file that exists is complete). Everything after ``DUMP_DIR`` goes to
``console.cli.main`` unchanged. Unlike ``python -m cProfile -m console.cli``, start-up, warm-up
and shutdown stay out of the profile. Threads other than the main one (the SQLite writer's) are
not profiled.
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys
from pathlib import Path
from types import FrameType


def main(argv: list[str]) -> int:
    """Install the two signal handlers, then run the CLI; returns its exit status."""
    from console.cli import main as cli_main

    dump_dir = Path(argv[0])
    profiler: cProfile.Profile | None = None
    dumps = 0

    def start(signum: int, frame: FrameType | None) -> None:
        nonlocal profiler
        if profiler is None:
            profiler = cProfile.Profile()
            profiler.enable()

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal profiler, dumps
        if profiler is None:
            return
        profiler.disable()
        dumps += 1
        path = dump_dir / f"{dumps}.prof"
        profiler.dump_stats(f"{path}.tmp")
        os.replace(f"{path}.tmp", path)
        profiler = None

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    return cli_main(argv[1:])


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
