"""Building blocks of the settings: durations, the strict base model, the config error."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


def parse_duration(value: Any) -> float:
    """``10m`` → 600.0; numbers are seconds."""
    if isinstance(value, int | float):
        return float(value)
    match = _DURATION.match(str(value))
    if not match:
        raise ValueError(f"not a duration: {value!r} (use e.g. 30s, 10m, 1h)")
    return float(match.group(1)) * _UNITS[match.group(2)]


Duration = Annotated[float, BeforeValidator(parse_duration)]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the file, the key path and why."""


class Strict(BaseModel):
    """Unknown keys are errors, so that a typo never silently disables something."""

    model_config = ConfigDict(extra="forbid", frozen=True)
