"""Exact frame rates: everything is a `Fraction`, so 29.97 fps stays 30000/1001."""

from __future__ import annotations

from fractions import Fraction

from t2vz_core.errors import InputError

# Rates a float like 29.97 almost certainly means (NTSC family), besides whole numbers.
_NTSC = [Fraction(n * 1000, 1001) for n in (24, 30, 48, 60, 120, 240)]


def snap_rate(rate: Fraction, rel_tol: float = 2e-4) -> Fraction:
    """Replace a rate that is a rounded NTSC or whole-number rate by the exact one."""
    for exact in [*_NTSC, Fraction(round(rate))]:
        if exact > 0 and abs(rate - exact) <= exact * Fraction(rel_tol):
            return exact
    return rate


def to_fraction(value: Fraction | int | float | str, name: str = "fps") -> Fraction:
    """Parse a frame rate: Fraction, int, float (29.97 -> 30000/1001) or "num/den" text."""
    try:
        if isinstance(value, Fraction):
            rate = value
        elif isinstance(value, int) and not isinstance(value, bool):
            rate = Fraction(value)
        elif isinstance(value, float):
            rate = snap_rate(Fraction(value).limit_denominator(1_000_000))
        elif isinstance(value, str):
            text = value.strip()
            rate = Fraction(text) if "/" in text else to_fraction(float(text), name)
        else:
            raise TypeError(type(value).__name__)
    except (ValueError, ZeroDivisionError, TypeError, OverflowError) as exc:
        raise InputError(f"{name}: {value!r} is not a frame rate ({exc})") from None
    if not 0 < rate <= 1000:
        raise InputError(f"{name}: {value!r} must be a positive frame rate of at most 1000")
    return rate


def fraction_text(rate: Fraction) -> str:
    """ "num/den" text that `to_fraction` reads back exactly (JSON-safe)."""
    return f"{rate.numerator}/{rate.denominator}"
