"""Shared types of the R11 redactor: labels (placeholders), spans and detectors."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# R11 placeholder labels. Redacted text carries "[LABEL]".
EMAIL = "EMAIL"
PHONE = "PHONE"
CREDIT_CARD = "CREDIT_CARD"
IP_ADDRESS = "IP_ADDRESS"
IBAN = "IBAN"
NATIONAL_ID = "NATIONAL_ID"
STREET_ADDRESS = "STREET_ADDRESS"
PERSON = "PERSON"
CREDENTIAL = "CREDENTIAL"

LABELS: tuple[str, ...] = (
    CREDENTIAL,
    EMAIL,
    IBAN,
    CREDIT_CARD,
    NATIONAL_ID,
    IP_ADDRESS,
    PHONE,
    STREET_ADDRESS,
    PERSON,
)
# Overlap resolution: the more specific, validated kind wins.
PRIORITY: dict[str, float] = {label: len(LABELS) - i for i, label in enumerate(LABELS)}
# Weak variants ("LABEL?"): found from context only; they rank below a street address.
PRIORITY[PHONE + "?"] = (PRIORITY[STREET_ADDRESS] + PRIORITY[PERSON]) / 2

# (start, end, label), character offsets into the text.
Span = tuple[int, int, str]


@dataclass(frozen=True, slots=True)
class Trigger:
    """An engine-neutral regular expression (RE2 / Hyperscan / Python ``re`` common subset:
    no look-around, no back-references). It must match somewhere in every text in which its
    detector can find something, so that a multi-pattern engine can skip the detector."""

    pattern: str
    caseless: bool = False


@dataclass(frozen=True, slots=True)
class Detector:
    """``find(text, low)`` returns spans; ``low`` is ``text.lower()`` when that keeps every
    offset (same length), else ``None`` (callers then fall back to case-insensitive regexes)."""

    name: str
    triggers: tuple[Trigger, ...]
    find: Callable[[str, str | None], list[Span]]
    # A cheap Python test used instead of engine triggers (e.g. "the text is all lower case").
    gate: Callable[[str], bool] | None = None
