"""Date shifting and age computation on DICOM DA / DT strings (pure functions)."""

from __future__ import annotations

import datetime as dt
import re

_DA = re.compile(r"^(\d{4})(\d{2})(\d{2})$")
_DT = re.compile(r"^(\d{4})(\d{2})(\d{2})(.*)$")


def _parse_da(value: str) -> dt.date | None:
    match = _DA.match(value.strip())
    if not match:
        return None
    try:
        return dt.date(int(match[1]), int(match[2]), int(match[3]))
    except ValueError:
        return None


def shift_da(value: str, days: int) -> str | None:
    """Shift a DA value ``YYYYMMDD`` by ``days``; ``None`` if it is not a valid full date."""
    date = _parse_da(value)
    if date is None:
        return None
    try:
        return (date + dt.timedelta(days=days)).strftime("%Y%m%d")
    except OverflowError:
        return None


def shift_dt(value: str, days: int) -> str | None:
    """Shift the date part of a DT value, keeping time and offset; ``None`` if unparseable.

    A DT with less than a full date (``YYYY`` or ``YYYYMM``) cannot be shifted exactly and
    returns ``None`` (the caller blanks it).
    """
    match = _DT.match(value.strip())
    if not match:
        return None
    shifted = shift_da(match[1] + match[2] + match[3], days)
    return None if shifted is None else shifted + match[4]


def age_string(birth_da: str, on_da: str) -> str | None:
    """DICOM AS age (``nnnY``, ``nnnM`` below 2 years, ``nnnD`` below 2 months) or ``None``."""
    birth, on = _parse_da(birth_da), _parse_da(on_da)
    if birth is None or on is None or on < birth:
        return None
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    if years >= 2:
        return f"{min(years, 999):03d}Y"
    months = (on.year - birth.year) * 12 + on.month - birth.month - (on.day < birth.day)
    if months >= 2:
        return f"{months:03d}M"
    return f"{(on - birth).days:03d}D"
