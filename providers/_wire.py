"""Helpers both wire codecs share: validation errors that name the offending field."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from providers import errors


def invalid(message: str, param: str | None) -> errors.InvalidRequest:
    return errors.InvalidRequest(message, param=param)


def type_name(value: Any) -> str:
    """A JSON value's type as a message says it: "a string", "an array", "null", ..."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def plain(value: Mapping[str, Any]) -> dict[str, Any]:
    # orjson serialises dict but not other Mapping types.
    return value if isinstance(value, dict) else dict(value)
