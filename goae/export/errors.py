"""The export error, and the checks every numeric option goes through (CLI, app and library alike).
(NaN/inf in tensors: goae.weights.checks.nonfinite_names, the one check for weights and results.)"""
from __future__ import annotations

import math
import numbers


class ExportError(ValueError):
    """Bad input to an export function (shapes, options, empty meshes, unreadable files)."""


def finite(value, what: str, low: float | None = None, high: float | None = None) -> float:
    """`value` as a float, refused when it is not a finite number (NaN, inf, text) or outside [low, high]."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ExportError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(x):
        raise ExportError(f"{what} must be a finite number, got {value!r}")
    if (low is not None and x < low) or (high is not None and x > high):
        bounds = f"between {low:g} and {high:g}" if low is not None and high is not None else \
            (f">= {low:g}" if low is not None else f"<= {high:g}")
        raise ExportError(f"{what} must be {bounds}, got {x:g}")
    return x


def whole(value, what: str, low: int | None = None, high: int | None = None) -> int:
    """`value` as an int: a whole finite number (2 and 2.0 pass, 2.5, NaN and True do not) in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, str)):
        raise ExportError(f"{what} must be a whole number, got {value!r}")
    x = finite(value, what, low, high)
    if x != int(x):
        raise ExportError(f"{what} must be a whole number, got {value!r}")
    return int(x)
