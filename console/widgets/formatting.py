"""Plain-text formatting shared by the panes: health glyphs, numbers, dollars, bars, sparklines.

Everything here returns strings; colour is never decided here but by the CSS class or
component class named after the state (``-healthy``, ``live-table--down``, ...).
A value the engine could not know (None) is shown as an em dash, never as 0.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

from engine.snapshot import HealthState

GLYPHS: dict[str, str] = {
    "healthy": "●",
    "degraded": "▲",
    "down": "✖",
    "drained": "⏸",
    "idle": "○",
}

BREAKER_GLYPHS: dict[str, str] = {
    "open": "⊘",
    "half_open": "◐",
    "closed": "●",
}
"""A deployment's circuit breaker: out of rotation, letting a probe through, or closed."""

BREAKER_STATES: dict[str, str] = {"open": "open", "half_open": "half-open", "closed": "closed"}
"""The word for each breaker state, which is also its state class (``live-table--half-open``)."""

SEVERITY_GLYPHS: dict[str, str] = {
    "info": "●",
    "warning": "▲",
    "critical": "✖",
}
"""An alert's severity, in the same glyphs as health: noted, needs attention, broken."""

SEVERITIES = ("info", "warning", "critical")
"""Alert severities, least severe first."""

UNKNOWN = "—"
_BARS = "▁▂▃▄▅▆▇█"
_EIGHTHS = " ▏▎▍▌▋▊▉"
_FULL = "█"
_TRACK = "░"


def health(state: HealthState | str) -> str:
    """Glyph and word, e.g. ``"● healthy"``; the word keeps it readable without colour."""
    return f"{GLYPHS.get(state, '?')} {state}"


def breaker(state: str, left_s: float | None = None, *, suffix: str = "") -> str:
    """Glyph, word and time left, e.g. ``"⊘ open 12s"``, ``"◐ half-open"``.

    ``suffix`` follows the time left (``" left"``); nothing is added without a time.
    """
    text = f"{BREAKER_GLYPHS.get(state, '?')} {BREAKER_STATES.get(state, state)}"
    if state == "open" and left_s is not None:
        text += f" {time_left(left_s)}{suffix}"
    return text


def time_left(seconds: float) -> str:
    """A wait still to run, rounded up so it never reads 0 while it lasts: ``12s``, ``2m``."""
    whole = max(0, math.ceil(seconds))
    if whole < 100:
        return f"{whole}s"
    return f"{math.ceil(whole / 60)}m"


def severity(level: str) -> str:
    """Glyph and word, e.g. ``"▲ warning"``."""
    return f"{SEVERITY_GLYPHS.get(level, '?')} {level}"


def usd(value: float | None) -> str:
    """Dollars, as precise as LLM prices need: ``$0.0042``, ``$12.35``, ``$1,235``.

    A positive amount too small for four decimals reads ``<$0.0001``, never ``$0.0000``.
    """
    if value is None:
        return UNKNOWN
    magnitude = abs(value)
    if magnitude == 0:
        return "$0.00"
    if magnitude < 0.0001:
        return "<$0.0001"
    if magnitude < 1:
        return f"${value:.4f}"
    if magnitude < 1000:
        return f"${value:,.2f}"
    return f"${value:,.0f}"


def budget(value: float) -> str:
    """A budget: whole dollars without cents (``$100``), else as `usd`."""
    if value >= 1 and float(value).is_integer():
        return f"${value:,.0f}"
    return usd(value)


def usd_at_least(value: float | None, *, partial: bool) -> str:
    """Dollars that may leave out traffic of unknown cost (``partial``): then a lower bound,
    ``≥$1.23``, and unknown (an em dash) rather than a total of zero."""
    if value is None or (partial and value == 0):
        return UNKNOWN
    return f"≥{usd(value)}" if partial else usd(value)


def bar(share: float, width: int = 10) -> str:
    """A horizontal bar ``width`` cells long, filled to ``share`` (0..1, clamped) in eighths,
    on a light track: ``████████▌░`` is 85%."""
    eighths = round(max(0.0, min(1.0, share)) * width * 8)
    full, part = divmod(eighths, 8)
    text = _FULL * full + (_EIGHTHS[part] if part else "")
    return text + _TRACK * (width - len(text))


def percent(value: float | None, *, digits: int = 0) -> str:
    if value is None:
        return UNKNOWN
    return f"{value * 100:.{digits}f}%"


def millis(value: float | None) -> str:
    if value is None:
        return UNKNOWN
    if value >= 10_000:
        return f"{value / 1000:.0f}s"
    if value >= 1000:
        return f"{value / 1000:.1f}s"
    return f"{value:.0f}ms"


def count(value: float | None) -> str:
    """A compact count: 950, 12.3k, 4.1M."""
    if value is None:
        return UNKNOWN
    magnitude = abs(value)
    if magnitude >= 1_000_000_000:
        return f"{value / 1_000_000_000:.1f}G"
    if magnitude >= 1_000_000:
        return f"{value / 1_000_000:.1f}M"
    if magnitude >= 10_000:
        return f"{value / 1000:.0f}k"
    if magnitude >= 1000:
        return f"{value / 1000:.1f}k"
    if isinstance(value, float) and not value.is_integer():
        return f"{value:.1f}"
    return f"{value:.0f}"


def rate(value: float) -> str:
    """Requests per second with one decimal."""
    return f"{value:.1f}"


def spark(values: Sequence[int], width: int = 12) -> str:
    """A unicode sparkline of ``values`` (oldest first) in at most ``width`` characters.

    Series longer than ``width`` are summed into equal buckets, the newest bucket last, so a
    60-second series becomes a one-minute picture. Values scale to the largest one; zero is the baseline.
    """
    if not values:
        return ""
    if len(values) > width:
        size = -(-len(values) // width)
        # Bucket from the newest end so the last bucket is always complete and current.
        tail = len(values) % size
        head = [sum(values[:tail])] if tail else []
        values = head + [sum(values[i : i + size]) for i in range(tail, len(values), size)]
        values = values[-width:]
    top = max(values)
    if top <= 0:
        return _BARS[0] * len(values)
    last = len(_BARS) - 1
    return "".join(_BARS[max(0, min(last, round(v / top * last)))] for v in values)


def clock_time(at: float) -> str:
    """Wall-clock time of day, local time, to the second."""
    return time.strftime("%H:%M:%S", time.localtime(at))


def age(seconds: float | None) -> str:
    """How long ago, coarse: ``0s``, ``12s``, ``3m``, ``2h``."""
    if seconds is None:
        return UNKNOWN
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m"
    return f"{seconds // 3600:.0f}h"
