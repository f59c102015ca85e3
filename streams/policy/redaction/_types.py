"""Shared types of the R11 redactor: labels (placeholders), spans and detectors."""

from __future__ import annotations

import re
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


def _non_ascii_decimals() -> str:
    """Ranges of every non-ASCII character that Python ``re`` counts as ``\\d`` in a str
    pattern (Unicode category Nd, ``str.isdecimal``), as literal characters for a class."""
    out: list[str] = []
    start = prev = -1
    for cp in range(0x80, _LAST_DECIMAL + 1):
        if chr(cp).isdecimal():
            if cp != prev + 1:
                if start >= 0:
                    out.append(f"{chr(start)}-{chr(prev)}")
                start = cp
            prev = cp
    out.append(f"{chr(start)}-{chr(prev)}")
    return "".join(out)


# No decimal digit above plane 1 (Unicode 15; the unit tests check the running Python).
_LAST_DECIMAL = 0x1FFFF
# A trigger's "digit" wherever its finder uses ``\d`` (Unicode for str patterns): a bare
# [0-9] would let "٤٢ Elm Street" skip a detector that finds it (fail open). RE2 and ``re``
# read the literal characters as code points; Hyperscan compiles such patterns in UTF-8
# mode (``_engine``).
NON_ASCII_DIGIT = "[" + _non_ascii_decimals() + "]"
DIGIT = "[0-9" + NON_ASCII_DIGIT[1:]
# A trigger's "whitespace" wherever its finder uses ``\s``: Python's is Unicode, RE2's and
# Hyperscan's are ASCII only. So: ASCII whitespace (with \x1c-\x1f, which ``str.isspace``
# counts) or any non-ASCII character; byte engines see the latter as bytes >= 0x80, so use
# it repeated ("+" / "*") only.
SPACE = r"[^\x00-\x08\x0e-\x1b\x21-\x7f]"

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
    # A Python test that must also pass once a trigger fired, for what a trigger cannot say
    # ("the text is all lower case"); triggers first, so it only costs on texts that fire.
    gate: Callable[[str], bool] | None = None
    # ``find`` told which of ``triggers`` fired (their indices), for a detector whose
    # triggers each stand for some of its regexes: a regex whose trigger did not fire cannot
    # match, so it is not run (a whole-text regex costs ~30-60 µs per KB). Used whenever the
    # engine can tell (not with the "none" engine).
    find_fired: Callable[[str, str | None, frozenset[int]], list[Span]] | None = None


def scan(
    rx: re.Pattern[str], text: str, check: Callable[[re.Match[str]], Span | None]
) -> list[Span]:
    """Like ``finditer`` + a Python check, except that a rejected match does not hide a
    candidate starting inside it: the search resumes one character after a rejected start
    ("203.0.113.7 42 Elm Street": the match "7 42 Elm Street" is rejected, "42 Elm Street"
    must still be tried)."""
    out: list[Span] = []
    pos = 0
    n = len(text)
    while pos < n:
        m = rx.search(text, pos)
        if m is None:
            break
        span = check(m)
        if span is None:
            pos = m.start() + 1
        else:
            out.append(span)
            pos = max(span[1], m.start() + 1)
    return out
