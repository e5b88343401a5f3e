"""The console's one key registry.

Every operator action is a `KeySpec` here, and everything that offers actions reads this
registry: the app's ``BINDINGS`` (so the footer), the ``?`` help screen, ``:`` command mode and
the command palette. A spec is *dangerous* when it changes the engine (drain, safe mode, drills,
tier edits and rollout steps): read-only mode hides every dangerous spec and refuses its ``:``
command.

Key names are Textual's (``question_mark``, ``colon``, ``slash``); ``display`` is what people
see. Keys that terminals or tmux swallow (``ctrl+s``, ``ctrl+j``, ``ctrl+o``, alt and cmd
combinations) are deliberately absent.
"""

from __future__ import annotations

from dataclasses import dataclass

from textual.binding import Binding, BindingType


@dataclass(frozen=True, slots=True)
class KeySpec:
    id: str
    """Stable name of the entry; unique in `REGISTRY`."""
    key: str | None
    """Textual key name, or None for an action reached only through ``:`` command mode."""
    display: str
    """How the key is written in the footer and the help screen."""
    description: str
    """A short label for the footer."""
    help: str
    """One line for the help screen."""
    dangerous: bool
    """True when the action changes the engine; hidden and refused in read-only mode."""
    action: str
    """The app action the key runs (``"drill('errors')"`` carries a parameter)."""
    command: str | None = None
    """The ``:`` command syntax (``"drain TARGET"``); its first word is the verb."""
    demo_only: bool = False
    """Offered only when the app runs in demo mode (drills on simulated providers)."""
    footer: bool = True
    """Shown in the footer (the help screen lists every entry)."""

    @property
    def verb(self) -> str | None:
        return self.command.split()[0] if self.command else None

    @property
    def action_name(self) -> str:
        """The action without parameters, as ``check_action`` receives it."""
        return self.action.split("(", 1)[0]


def _key(
    id: str,
    key: str | None,
    description: str,
    help: str,
    action: str,
    *,
    display: str | None = None,
    dangerous: bool = False,
    command: str | None = None,
    demo_only: bool = False,
    footer: bool = True,
) -> KeySpec:
    shown = display if display is not None else (key or "")
    return KeySpec(id, key, shown, description, help, dangerous, action, command, demo_only, footer)


REGISTRY: tuple[KeySpec, ...] = (
    _key(
        "help",
        "question_mark",
        "help",
        "show keys and commands",
        "help",
        display="?",
        command="help",
    ),
    _key("command", "colon", "cmd", "command mode: :drain X, :safe on, :q", "command", display=":"),
    _key(
        "filter",
        "slash",
        "filter",
        "filter the request tail (enter keeps, esc clears)",
        "filter",
        display="/",
        command="filter TEXT",
    ),
    _key(
        "pause",
        "p",
        "pause",
        "pause or resume rendering; the engine keeps running",
        "pause",
        command="pause",
    ),
    _key("rate", "r", "rate", "cycle the refresh rate", "cycle_rate", command="rate SECONDS"),
    _key(
        "drain",
        "d",
        "drain",
        "drain or undrain the selected provider or deployment",
        "drain",
        dangerous=True,
        command="drain TARGET",
    ),
    _key(
        "undrain",
        None,
        "undrain",
        "put a drained provider or deployment back",
        "undrain",
        dangerous=True,
        command="undrain TARGET",
    ),
    _key(
        "safe_mode",
        "s",
        "safe",
        "safe mode on/off: all traffic to the safe-mode tier",
        "safe_mode",
        dangerous=True,
        command="safe on|off",
    ),
    _key(
        "edit_tier",
        "m",
        "edit",
        "edit a tier's mapping and propose it as a release (staged rollout or emergency)",
        "edit_tier",
        dangerous=True,
        command="edit TIER",
    ),
    _key(
        "advance",
        "a",
        "advance",
        "advance the rollout a stage (an override with a reason when gates do not pass)",
        "advance",
        dangerous=True,
        command="advance",
    ),
    _key(
        "rollback",
        "b",
        "rollback",
        "roll the rollout back: all traffic to the baseline release",
        "rollback",
        dangerous=True,
        command="rollback",
    ),
    _key("quit", "q", "quit", "quit (asks first; :q quits at once)", "quit", command="q"),
    _key(
        "drill_errors",
        "1",
        "errors",
        "drill: error storm on the selected provider",
        "drill('errors')",
        dangerous=True,
        demo_only=True,
    ),
    _key(
        "drill_429",
        "2",
        "429s",
        "drill: rate-limit (429) storm on the selected provider",
        "drill('429')",
        dangerous=True,
        demo_only=True,
    ),
    _key(
        "drill_latency",
        "3",
        "latency",
        "drill: latency spike on the selected provider",
        "drill('latency')",
        dangerous=True,
        demo_only=True,
    ),
    _key(
        "drill_hang",
        "4",
        "hang",
        "drill: the selected provider stops answering",
        "drill('hang')",
        dangerous=True,
        demo_only=True,
    ),
    _key(
        "drill_heal",
        "0",
        "heal",
        "drill: heal the selected provider",
        "drill('heal')",
        dangerous=True,
        demo_only=True,
    ),
    _key(
        "drill",
        None,
        "drill",
        "break or heal a simulated provider",
        "drill",
        dangerous=True,
        demo_only=True,
        command="drill PROVIDER errors|429|latency|hang|heal",
    ),
    _key(
        "back",
        "escape",
        "back",
        "close the filter, the command line or a dialog",
        "back",
        display="esc",
        footer=False,
    ),
)

_BY_ID = {spec.id: spec for spec in REGISTRY}
_BY_VERB = {spec.verb: spec for spec in REGISTRY if spec.verb is not None}
_BY_ACTION: dict[str, KeySpec] = {}
for _spec in REGISTRY:
    _BY_ACTION.setdefault(_spec.action_name, _spec)


def spec(spec_id: str) -> KeySpec:
    """The entry with this id; raises KeyError for an unknown id."""
    return _BY_ID[spec_id]


def for_verb(verb: str) -> KeySpec | None:
    """The entry whose ``:`` command starts with ``verb``, or None."""
    return _BY_VERB.get(verb)


def for_action(action: str) -> KeySpec | None:
    """The entry that runs ``action`` (a name without parameters), or None."""
    return _BY_ACTION.get(action)


def bindings() -> list[BindingType]:
    """Textual bindings for every entry that has a key, in registry order."""
    return [
        Binding(s.key, s.action, s.description, show=s.footer, key_display=s.display, id=s.id)
        for s in REGISTRY
        if s.key is not None
    ]
