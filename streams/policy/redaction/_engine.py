"""R11 multi-pattern pre-filter engines.

An engine answers one question per text: which triggers match somewhere? Only the detectors
owning a fired trigger then run their (slower, Python ``re``) extraction. All engines are
exact with respect to the triggers, so the redaction output does not depend on the engine
(``benchmarks/redaction_speed.py`` checks this and measures them):

* ``hyperscan``: one Hyperscan block-mode database, every trigger with SINGLEMATCH;
* ``re2-set``:   one ``re2.Set`` (RE2::Set), one DFA pass reporting the matching indices;
* ``re2-alt``:   one RE2 alternation of all triggers: a yes/no gate (it cannot tell which
  trigger fired without overlapping matches), then every detector runs;
* ``re``:        Python ``re``, each trigger searched in turn (the baseline);
* ``none``:      no pre-filter, every detector's Python finder runs on every text.

Texts that cannot be encoded to UTF-8 (lone surrogates from a lenient JSON decoder) make the
native engines fail; the redactor then runs every detector (fail closed).
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Protocol

from ._types import Trigger


class Engine(Protocol):
    name: str

    def fired(self, text: str) -> set[int] | None:
        """Indices of the triggers that match in ``text`` (``None``: could not tell, run all)."""
        ...


class NoEngine:
    """No pre-filter: every detector runs on every text (pure Python ``re`` finders)."""

    name = "none"

    def __init__(self, triggers: Sequence[Trigger]) -> None:
        pass

    def fired(self, text: str) -> set[int] | None:
        return None


class PyReEngine:
    name = "re"

    def __init__(self, triggers: Sequence[Trigger]) -> None:
        self._regexes = [re.compile(t.pattern, re.I if t.caseless else 0) for t in triggers]

    def fired(self, text: str) -> set[int] | None:
        return {i for i, rx in enumerate(self._regexes) if rx.search(text)}


class Re2SetEngine:
    name = "re2-set"

    def __init__(self, triggers: Sequence[Trigger]) -> None:
        import re2

        options = re2.Options()
        options.max_mem = 256 << 20
        self._set = re2.Set.SearchSet(options)
        for t in triggers:
            self._set.Add(("(?i)" if t.caseless else "") + t.pattern)
        self._set.Compile()
        # The wrapper's ``Match`` checks the type and encodes through a helper on every call;
        # ``fired`` encodes itself, so call the binding's ``RE2::Set`` directly (it takes
        # bytes; the wrapper's does too, should a later google-re2 rename the attribute).
        self._match = getattr(self._set, "_set", self._set).Match
        # RE2::Set::Match answers "no match" when its DFA cannot get memory (the Python
        # binding hides the error). It never bails out for being slow (kManyMatch), so the
        # only realistic failure is a budget too small for the pattern set, which would show
        # on every text: check once on a text that fires most triggers.
        expected = PyReEngine(triggers).fired(PROBE)
        if self.fired(PROBE) != expected:
            raise RuntimeError("re2.Set disagrees with re on the probe text: not usable")

    def fired(self, text: str) -> set[int] | None:
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            return None
        hits = self._match(data)
        return set(hits) if hits else set()


class Re2AltEngine:
    name = "re2-alt"

    def __init__(self, triggers: Sequence[Trigger]) -> None:
        import re2

        options = re2.Options()
        options.max_mem = 64 << 20
        options.never_capture = True
        alternation = "|".join(f"(?:{'(?i)' if t.caseless else ''}{t.pattern})" for t in triggers)
        self._rx = re2.compile(alternation, options)
        self._all = set(range(len(triggers)))

    def fired(self, text: str) -> set[int] | None:
        try:
            return set(self._all) if self._rx.search(text) else set()
        except UnicodeEncodeError:
            return None


class HyperscanEngine:
    name = "hyperscan"

    def __init__(self, triggers: Sequence[Trigger]) -> None:
        import hyperscan

        self._hs = hyperscan
        self._db = hyperscan.Database(mode=hyperscan.HS_MODE_BLOCK)
        # A pattern with literal non-ASCII characters (``_types.DIGIT``) must be read as
        # UTF-8 code points, not bytes; the scanned text is always valid UTF-8 (``fired``).
        flags = [
            hyperscan.HS_FLAG_SINGLEMATCH
            | (hyperscan.HS_FLAG_CASELESS if t.caseless else 0)
            | (0 if t.pattern.isascii() else hyperscan.HS_FLAG_UTF8)
            for t in triggers
        ]
        self._db.compile(
            expressions=[t.pattern.encode("utf-8") for t in triggers],
            ids=list(range(len(triggers))),
            elements=len(triggers),
            flags=flags,
        )
        self._local = threading.local()  # Hyperscan scratch space is per thread

    def fired(self, text: str) -> set[int] | None:
        try:
            data = text.encode("utf-8")
        except UnicodeEncodeError:
            return None
        scratch = getattr(self._local, "scratch", None)
        if scratch is None:
            scratch = self._local.scratch = self._hs.Scratch(self._db)
        hits: set[int] = set()
        self._db.scan(data, match_event_handler=_on_match, context=hits, scratch=scratch)
        return hits


def _on_match(id_: int, _from: int, _to: int, _flags: int, hits: object) -> None:
    hits.add(id_)  # type: ignore[attr-defined]


ENGINES: dict[str, type[NoEngine | PyReEngine | Re2SetEngine | Re2AltEngine | HyperscanEngine]] = {
    "hyperscan": HyperscanEngine,
    "re2-set": Re2SetEngine,
    "re2-alt": Re2AltEngine,
    "re": PyReEngine,
    "none": NoEngine,
}


def build_engine(name: str, triggers: Sequence[Trigger]) -> Engine:
    """``name`` is one of ENGINES or "auto": the fastest available (see redaction_results)."""
    if name != "auto":
        engine: Engine = ENGINES[name](triggers)
        return engine
    for candidate in AUTO_ORDER:
        try:
            return ENGINES[candidate](triggers)
        except ImportError:
            continue
    return PyReEngine(triggers)


# Measured on prompt/generation pairs (docs/redaction_results.md): RE2::Set is the fastest on
# such short texts and google-re2 is a declared dependency; Hyperscan (optional) is next.
AUTO_ORDER: tuple[str, ...] = ("re2-set", "hyperscan", "re")
# Start-up self-check text for RE2::Set: fires most triggers.
PROBE = (
    "Dear Mr. Smith, my name is Anna. Mail jane@example.com, call +1 415 555 0199 or "
    "(541) 714-1388; phone: 781 1704 office. Card 4111 1111 1111 1111, IBAN DE89 3704 0044 "
    "0532 0130 00, IP 203.0.113.7 and 2001:db8::1, SSN 494-33-0748, passport no. X1234567, "
    "NI AB 12 34 56 C. I live at 42 Elm Street, Apt. 5, Springfield, IL 62704, or Rua Diadema "
    "1903, Søndergade 52, 20789 Allika 46, P.O. Box 242, the corner of Main St and 5th Ave. "
    "password=hunter2 api_key: abcd1234 Bearer abcdefghijklmnop1234 "
    "postgres://u:p@db/x eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig AKIAIOSFODNN7EXAMPLE "
    "-----BEGIN RSA PRIVATE KEY-----"
)
