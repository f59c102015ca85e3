"""R11 personal-information redaction (pure Python, no Kafka).

R11: before anything reaches training candidates or safety evaluation, personal information is
removed from prompts, documents, generations and metadata, and replaced by typed placeholders.

API::

    redact("Mail jane@example.com")    -> Redaction(text="Mail [EMAIL]", counts={"EMAIL": 1})
    r = Redactor()                              # compile once, reuse (safe across threads)
    r.redact(text)                              -> Redaction
    r.redact_mapping({"k": "v", "n": {...}})    -> (redacted dict, counts)

Placeholders (``[LABEL]``) and what they cover:

* ``[EMAIL]``          e-mail addresses (ASCII local part and domain).
* ``[PHONE]``          phone numbers: international (+CC / 00CC), North-American formatted
                       numbers, and 7-15 digit numbers next to a phone word ("call", "Tel",
                       "Mobile:", "... office", "fax").
* ``[CREDIT_CARD]``    payment card numbers: 12-19 digits (optionally grouped 4-4-4-4 / 4-6-5),
                       Luhn-valid, with a length that fits the issuer prefix.
* ``[IBAN]``           IBANs: registry length for the country and ISO 7064 mod-97 == 1.
* ``[IP_ADDRESS]``     IPv4 and IPv6 addresses, including private (RFC 1918), link-local and
                       documentation ranges (they identify a device, hence a person, inside an
                       organisation); NOT loopback, unspecified, broadcast or netmasks.
* ``[NATIONAL_ID]``    government identifiers of a person: US SSN (formatted, with the SSA
                       validity rules), UK National Insurance numbers, and any number that
                       follows an identity-document phrase (driver's licence, passport,
                       national id, tax id, SIN, BSN, DNI, personnummer, ...). Driver's
                       licences and passports are national ids here: one placeholder for
                       "a document number that identifies a person".
* ``[STREET_ADDRESS]`` street addresses with the unit, city, state, country and postal code
                       lines that belong to them; post boxes and military addresses.
* ``[PERSON]``         people's names (lexicon + titles + context phrases, see ``_names``).
* ``[CREDENTIAL]``     secrets: private-key blocks, JWTs, bearer/basic tokens, well-known API
                       key formats (AWS, GitHub, GitLab, Slack, Stripe, OpenAI/Anthropic,
                       Google, Hugging Face, npm, PyPI, SendGrid, ...), user:password in URLs,
                       and values of ``password=`` / ``api_key: `` / ``"token": "..."`` /
                       "my password is ...".

Not redacted (out of R11's list): organisations, places on their own, dates, ages, job
titles, nationalities, URLs/domains (except credentials in them), MAC addresses.

Fast path: one multi-pattern engine (``_engine``) tells which detectors can match at all and
answers the cheap gates in the same scan (a digit in text without capitals, no capital at
all): text with no trigger costs that scan plus, when it has a capital letter, one
capitalised-word scan for the name lexicon.
Redacting redacted text changes nothing (existing placeholders are left alone).
"""

from __future__ import annotations

import bisect
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._address import DETECTORS as _ADDRESS_DETECTORS
from ._anycase import DETECTORS as _ANYCASE_DETECTORS
from ._anycase import kind as name_kind
from ._detectors import DETECTORS
from ._engine import Engine, build_engine
from ._names import NO_CAPITALS, find_names, gate
from ._names import TRIGGERS as _NAME_TRIGGERS
from ._types import (
    CREDENTIAL,
    CREDIT_CARD,
    EMAIL,
    IBAN,
    IP_ADDRESS,
    LABELS,
    NATIONAL_ID,
    PERSON,
    PHONE,
    PRIORITY,
    STREET_ADDRESS,
    Detector,
    Span,
    Trigger,
)

__all__ = [
    "CREDENTIAL",
    "CREDIT_CARD",
    "EMAIL",
    "IBAN",
    "IP_ADDRESS",
    "LABELS",
    "NATIONAL_ID",
    "PERSON",
    "PHONE",
    "STREET_ADDRESS",
    "Redaction",
    "Redactor",
    "placeholder",
    "redact",
]

_NAMES = -1
_NO_CAPITALS = -2
_MAX_PASSES = 8
_PERSON_IF_CONTACT = PERSON + "?"
_PLACEHOLDER = re.compile(r"\[(?:" + "|".join(LABELS) + r")\]")
_EMPTY: Mapping[str, int] = types.MappingProxyType({})
# Results for short texts are remembered: metadata keys and values ("app", "demo", "eu-west-1")
# repeat on every record, and a short text can still cost a full name or address analysis
# ("Demo" is a surname). Bounded: at most _CACHE_SIZE texts of _CACHE_MAX_LEN characters.
_CACHE_MAX_LEN = 64
_CACHE_SIZE = 4096


def placeholder(label: str) -> str:
    """The typed placeholder that replaces a span of ``label`` (R11)."""
    return f"[{label}]"


@dataclass(frozen=True, slots=True)
class Redaction:
    """R11 result: the redacted text and how many spans of each label were replaced."""

    text: str
    counts: Mapping[str, int] = field(default_factory=lambda: _EMPTY)


class Redactor:
    """R11 redactor; build once (compiles the engine) and reuse.

    ``engine``: "auto" (RE2::Set, the fastest measured, see docs/redaction_results.md; then
    Hyperscan if installed, then Python ``re``), "re2-set", "hyperscan", "re2-alt", "re" or
    "none" (no pre-filter). The output does not depend on the engine.
    """

    def __init__(self, engine: str = "auto") -> None:
        self._detectors: tuple[Detector, ...] = DETECTORS + _ADDRESS_DETECTORS + _ANYCASE_DETECTORS
        triggers: list[Trigger] = []
        owners: list[int] = []
        local: list[int] = []  # a trigger's index among its detector's triggers
        for index, detector in enumerate(self._detectors):
            triggers.extend(detector.triggers)
            owners.extend([index] * len(detector.triggers))
            local.extend(range(len(detector.triggers)))
        triggers.extend(_NAME_TRIGGERS)
        owners.extend([_NAMES] * len(_NAME_TRIGGERS))
        triggers.append(NO_CAPITALS)
        owners.append(_NO_CAPITALS)
        self._owners = tuple(owners)
        # Detectors that skip the regexes whose trigger did not fire: global trigger index ->
        # its index in the detector, for the triggers of such detectors only.
        self._local = {
            i: local[i]
            for i, owner in enumerate(owners)
            if owner >= 0 and self._detectors[owner].find_fired is not None
        }
        self._gates = tuple((i, d.gate) for i, d in enumerate(self._detectors) if d.gate)
        self._everything = frozenset(range(len(self._detectors)))
        self._quiet = frozenset({owners.index(_NO_CAPITALS)})  # subsets: no detector fired
        self._engine: Engine = build_engine(engine, triggers)
        self.engine = self._engine.name
        # Short text -> its Redaction (immutable, so shared). A plain dict: get and set are
        # atomic, and clearing it when full keeps it bounded without bookkeeping per hit.
        self._short: dict[str, Redaction] = {}

    # ------------------------------------------------------------------ detection
    def detect(self, text: str) -> list[Span]:
        """Non-overlapping spans (start, end, label) to replace, sorted by start."""
        if not text:
            return []
        fired = self._engine.fired(text)
        if fired is None:  # the engine could not scan this text: run everything (fail closed)
            owners = set(self._everything)
            cue = True
            lexicon = gate(text)
        elif fired <= self._quiet:  # the common case: only the name lexicon can find something
            if (fired and _without_capitals(text)) or not gate(text):
                return []
            owners = set()
            cue = False
            lexicon = True
        else:
            owners = set(map(self._owners.__getitem__, fired))
            cue = _NAMES in owners
            lexicon = not (_NO_CAPITALS in owners and _without_capitals(text)) and gate(text)
            for index, passes in self._gates:
                if index in owners and not passes(text):
                    owners.discard(index)
            owners.discard(_NAMES)
            owners.discard(_NO_CAPITALS)
            if not owners and not cue and not lexicon:
                return []
        low: str | None = text.lower()
        if len(low) != len(text):  # type: ignore[arg-type]
            low = None
        spans: list[Span] = []
        for index in sorted(owners):
            detector = self._detectors[index]
            if fired is not None and detector.find_fired is not None:
                mine = frozenset(self._local[i] for i in fired if self._owners[i] == index)
                spans.extend(detector.find_fired(text, low, mine))
            else:
                spans.extend(detector.find(text, low))
        # Names are cut at the other spans, as a second pass would see them (placeholders).
        blocked = [(s, e) for s, e, _ in spans]
        if cue or lexicon:
            spans.extend(find_names(text, low, cue, blocked, lexicon))
        if not spans:
            return []
        if any(label == _PERSON_IF_CONTACT for _, _, label in spans):
            spans = _confirm_name_lines(spans)
        if any(label == PERSON for _, _, label in spans):
            spans.extend(_mentions(text, spans))
        protected = [m.span() for m in _PLACEHOLDER.finditer(text)] if "[" in text else []
        return _resolve(text, spans, protected)

    def redact(self, text: str) -> Redaction:
        """R11: ``text`` with every detected span replaced by its typed placeholder.

        When something was replaced, the result is scanned again (up to ``_MAX_PASSES``):
        a candidate rejected because it was glued to another one ("42 Elm Street494-33-0748")
        is found once its neighbour is a placeholder, so redacting the output again changes
        nothing. Text without personal information is scanned once."""
        if len(text) <= _CACHE_MAX_LEN and type(text) is str:
            cached = self._short.get(text)
            if cached is None:
                cached = self._redact(text)
                if len(self._short) >= _CACHE_SIZE:
                    self._short.clear()
                self._short[text] = cached
            return cached
        return self._redact(text)

    def _redact(self, text: str) -> Redaction:
        spans = self.detect(text)
        if not spans:  # the common case: no counts to build
            return Redaction(text, _EMPTY)
        counts: dict[str, int] = {}
        for n in range(_MAX_PASSES):
            if n:
                spans = self.detect(text)
                if not spans:
                    break
            pieces: list[str] = []
            last = 0
            for s, e, label in spans:
                pieces.append(text[last:s])
                pieces.append(f"[{label}]")
                counts[label] = counts.get(label, 0) + 1
                last = e
            pieces.append(text[last:])
            text = "".join(pieces)
        return Redaction(text, types.MappingProxyType(counts))

    def redact_mapping(self, values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
        """R11 for metadata: string values (and string keys) redacted, recursing into nested
        mappings and lists; other values (numbers, booleans, None) kept. A key that contains
        personal information is redacted too; if two keys then collide, ``#2``, ``#3``... is
        appended. Returns the new dict and the summed counts."""
        counts: dict[str, int] = {}
        return self._redact_mapping(values, counts), counts

    def _redact_mapping(self, values: Mapping[Any, Any], counts: dict[str, int]) -> dict[Any, Any]:
        out: dict[Any, Any] = {}
        for key, value in values.items():
            new_key = self._redact_value(key, counts) if isinstance(key, str) else key
            if new_key in out:
                n = 2
                while f"{new_key}#{n}" in out:
                    n += 1
                new_key = f"{new_key}#{n}"
            out[new_key] = self._redact_value(value, counts)
        return out

    def _redact_value(self, value: Any, counts: dict[str, int]) -> Any:
        if isinstance(value, str):
            result = self.redact(value)
            for label, n in result.counts.items():
                counts[label] = counts.get(label, 0) + n
            return result.text
        if isinstance(value, Mapping):
            return self._redact_mapping(value, counts)
        if isinstance(value, list | tuple):
            return [self._redact_value(v, counts) for v in value]
        return value


def _without_capitals(text: str) -> bool:
    """ASCII text without a capital letter: no capitalised word, so the lexicon gate is False.
    Checked, not taken from the NO_CAPITALS trigger alone: an engine may report more triggers
    than matched (re2-alt reports all), which is safe for every other trigger but would skip
    the gate here. The trigger only spares prose (which has capitals) this check."""
    return text.isascii() and text.lower() == text


_NAME_WORD = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?")


def _mentions(text: str, spans: list[Span]) -> list[Span]:
    """Every other mention of a detected name's words is a name too, whatever the context
    ("DAUGHTER-Krissy ... Krissy called back"): the output never keeps the text of a name
    it redacted elsewhere. Words that are names only (lexicon, distinct first names, unknown
    words found from context) in any letter case; a name that is also a word ("Bill",
    "Rose") only as written."""
    any_case: set[str] = set()
    as_written: set[str] = set()
    for s, e, label in spans:
        if label != PERSON:
            continue
        for m in _NAME_WORD.finditer(text, s, e):
            word = m.group()
            if len(word) < 2:
                continue
            k = name_kind(word.lower())
            if k in "DFSU":
                any_case.add(word.lower())
            elif k == "A":
                as_written.add(word)
    out: list[Span] = []
    low = text.lower()
    if len(low) != len(text):  # offsets would move: fall back to a regex
        for word in any_case:
            rx = re.compile(r"(?<!\w)" + re.escape(word) + r"(?!\w)", re.IGNORECASE)
            out.extend((m.start(), m.end(), PERSON) for m in rx.finditer(text))
        any_case = set()
    for words, haystack in ((any_case, low), (as_written, text)):
        for word in words:  # str.find: no pattern to compile for each new name
            i = haystack.find(word)
            while i >= 0:
                e = i + len(word)
                if not (i and _word_char(text[i - 1])) and not (
                    e < len(text) and _word_char(text[e])
                ):
                    out.append((i, e, PERSON))
                i = haystack.find(word, i + 1)
    return out


def _word_char(c: str) -> bool:
    return c.isalnum() or c == "_"


def _confirm_name_lines(spans: list[Span]) -> list[Span]:
    """A line holding only a name ("Jane Roe" above an address block) is a PERSON when other
    personal data (address, phone, e-mail, ...) follows within a few lines."""
    others = sorted(s for s, _, label in spans if label not in (PERSON, _PERSON_IF_CONTACT))
    out: list[Span] = []
    for s, e, label in spans:
        if label == _PERSON_IF_CONTACT:
            i = bisect.bisect_left(others, e)
            if i < len(others) and others[i] <= e + 300:
                out.append((s, e, PERSON))
        else:
            out.append((s, e, label))
    return out


class _Taken:
    """Non-overlapping intervals sorted by start (so overlap queries are logarithmic: long
    texts with thousands of spans stay linear-ish)."""

    def __init__(self, intervals: list[tuple[int, int]]) -> None:
        intervals = sorted(intervals)
        self.starts = [s for s, _ in intervals]
        self.ends = [e for _, e in intervals]

    def overlapping(self, s: int, e: int) -> list[tuple[int, int]]:
        i = max(0, bisect.bisect_right(self.starts, s) - 1)
        out = []
        while i < len(self.starts) and self.starts[i] < e:
            if self.ends[i] > s:
                out.append((self.starts[i], self.ends[i]))
            i += 1
        return out

    def add(self, s: int, e: int) -> None:
        i = bisect.bisect_left(self.starts, s)
        self.starts.insert(i, s)
        self.ends.insert(i, e)


def _resolve(text: str, spans: list[Span], protected: list[tuple[int, int]]) -> list[Span]:
    """Highest priority, then longest, wins; a span that overlaps a stronger one keeps its
    free parts; adjacent address pieces are merged."""
    taken = _Taken(protected)
    chosen: list[Span] = []
    for s, e, label in sorted(spans, key=lambda x: (-PRIORITY[x[2]], x[0] - x[1], x[0])):
        if e <= s:
            continue
        hits = taken.overlapping(s, e)
        if hits:
            # A span that overlaps a stronger one keeps its free parts, never vanishes (fail
            # closed, and what a second pass would find is already gone):
            # "Mrs. Barbara Yudina Apt" + address "Apt. 675 ..." -> "Barbara Yudina".
            for ps, pe in _free_parts(text, s, e, hits):
                taken.add(ps, pe)
                chosen.append((ps, pe, label.rstrip("?")))
            continue
        taken.add(s, e)
        chosen.append((s, e, label.rstrip("?")))
    chosen.sort()
    merged: list[Span] = []
    for s, e, label in chosen:
        if merged and label == STREET_ADDRESS and merged[-1][2] == STREET_ADDRESS:
            gap = text[merged[-1][1] : s]
            if len(gap) <= 3 and not gap.strip(" ,\t\n"):
                merged[-1] = (merged[-1][0], e, label)
                continue
        merged.append((s, e, label))
    return merged


def _free_parts(text: str, s: int, e: int, hits: list[tuple[int, int]]) -> list[tuple[int, int]]:
    pieces = []
    pos = s
    for ts, te in hits:  # sorted, non-overlapping
        if ts > pos:
            pieces.append((pos, ts))
        pos = max(pos, te)
    if pos < e:
        pieces.append((pos, e))
    out = []
    for ps, pe in pieces:
        while ps < pe and not text[ps].isalnum() and text[ps] not in "+(":
            ps += 1
        while pe > ps and not text[pe - 1].isalnum() and text[pe - 1] not in ".)":
            pe -= 1
        if pe - ps >= 2 and any(c.isalnum() for c in text[ps:pe]):
            out.append((ps, pe))
    return out


_DEFAULT: Redactor | None = None


def redact(text: str) -> Redaction:
    """R11 with a shared default ``Redactor`` (built on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Redactor()
    return _DEFAULT.redact(text)
