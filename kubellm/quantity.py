"""Kubernetes quantities (resource.Quantity) parsed exactly, and byte counts written for people.

Shared by the operator, the emulator and the sandbox: no imports beyond the standard library.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# The apiserver's own pattern for resource.Quantity strings.
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)
_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"n": Decimal("1e-9"), "u": Decimal("1e-6"), "m": Decimal("1e-3")}
_DECIMAL |= {"k": Decimal(10**3), "M": Decimal(10**6), "G": Decimal(10**9), "T": Decimal(10**12)}
_DECIMAL |= {"P": Decimal(10**15), "E": Decimal(10**18)}


def parse_quantity(value: str | int | float) -> Decimal:
    """Parse a Kubernetes quantity ("30Gi", "500m", "1e3", 2) into an exact Decimal; ValueError if malformed."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a quantity")
    if isinstance(value, int | float):
        return Decimal(str(value))
    text = value.strip()
    if not _QUANTITY_RE.match(text):
        raise ValueError(f"{value!r} is not a quantity (examples: 30Gi, 500Mi, 2, 500m, 1e9)")
    for suffix, factor in _BINARY.items():
        if text.endswith(suffix):
            return Decimal(text[: -len(suffix)]) * factor
    if text[-1] in _DECIMAL:  # "1E3" ends in a digit, so a trailing letter is always a suffix here
        return Decimal(text[:-1]) * _DECIMAL[text[-1]]
    try:
        return Decimal(text)
    except InvalidOperation as exc:  # pragma: no cover - the pattern already rejects these
        raise ValueError(f"{value!r} is not a quantity") from exc


def format_bytes(value: Decimal | int) -> str:
    """A byte count for people, in the largest binary unit it reaches: exact as a whole number (``10Ti``), else to
    one decimal (``69.0Gi``). The one formatter of sizes in kubellm's messages, so units never mix in one line."""
    number = int(value)
    magnitude = abs(number)
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        factor = _BINARY[suffix]
        if magnitude >= factor:
            if number % factor == 0:
                return f"{number // factor}{suffix}"
            return f"{number / factor:.1f}{suffix}"
    return str(number)


def to_quantity(value: int) -> str:
    """A whole number of bytes as an exact quantity string: the largest binary unit that divides it, else plain."""
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        if value and value % _BINARY[suffix] == 0:
            return f"{value // _BINARY[suffix]}{suffix}"
    return str(value)
