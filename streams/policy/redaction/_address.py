"""R11 street addresses without a statistical model.

A *core* is found first, then grown over the address lines around it:

* house number + street name + street type ("24 Clarke Avenue", "2450 Crown St");
* street-type prefix + name + number ("Rua do Arenque 1634", "ul. Słowicza 10", "Via Roma 131");
* compound street word + number ("Søndergade 52", "Friedhofstrasse 33", "Koskikatu 25");
* number + capitalised words + number ("20789 Allika 46": building and street number);
* units, post boxes, military addresses ("Apt. 117", "Suite 464", "P.O. Box 242",
  "PSC 3294, Box 9168", "APO AA 61487");
* "City, ST 12345" (US state + ZIP);
* a capitalised name + number right after an address phrase ("lives at", "my address is",
  "meet me at", "corner of", "Address:").

Growth: a preceding building number or unit, then following segments on the same line after a
comma or on the next lines (unit, city, state, country, postal code), each of which must look
like an address line.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ._lexicon import COMMON_WORDS, NOT_NAME, PLACES
from ._names import LO, UP
from ._types import DIGIT, NON_ASCII_DIGIT, STREET_ADDRESS, Detector, Span, Trigger, scan

_L = f"[{UP}{LO}]"
# Word, Word., O'Neil, McDonald, SPÅNGA (no nested quantifiers: no backtracking blow-up)
_CAP_WORD = f"(?:[{UP}](?:['’][{UP}])?[{UP}]?[{LO}]{_L}*\\.?|[{UP}]{{2,}}\\b)"
_ANY_WORD = f"(?:{_L}+\\.?)"
_NUM = r"\d{1,6}(?:[A-Ha-h](?![A-Za-z]))?(?:[/-]\d{1,4}[A-Za-z]?)?"
_PART = (
    r"(?:de|des|du|do|dos|da|das|del|della|dei|degli|di|la|le|les|el|al|van|von|der|den|z|ze"
    r"|nad|pod|na|u|i|e|y|of|the|on|an)"
)
_SUFFIX_WORDS = (
    "street st str avenue ave av road rd lane ln drive dr boulevard blvd court ct place pl way "
    "terrace ter parkway pkwy highway hwy square sq loop mall gateway park parks hill hills isle "
    "trail trl circle cir crescent cres close row alley walk plaza ridge "
    "landing heights grove gardens garden green glen fort ford falls estates expressway "
    "ferry field fields freeway knoll lake lakes manor meadow "
    "meadows mews mill mills motorway mount mountain orchard oval plain "
    "plains prairie ranch rapids river route rte shoal shoals shore shores skyway spring "
    "springs stravenue throughway turnpike "
    "valley via viaduct vista wharf wynd quay parade "
    "esplanade promenade rise chase bend bluff bluffs branch bridge brook brooks burg burgs bypass "
    "camp canyon cape causeway cliff cliffs corner corners "
    "courts cove creek crest crossing crossroad curve dale dam divide drives forest forge "
    "harbor harbour haven hollow inlet island islands "
    "lodge neck "
    "baan dreef laan weg straat strasse straße gasse allee allé platz ring utca út útja tér u "
    "tee tie katu vej gade gatan vägen veien vegur ulica ulice"
)
# Prefixes that are English words or single letters need a dot or a leading house number.
_PREFIX_WORDS = (
    "rue rua rúa via viale vicolo piazza piazzale corso largo strada calle avenida avda av "
    "avenue boulevard bd chemin allée quai impasse cours paseo camino "
    "carrera carretera plaza praça travessa alameda estrada rodovia ul ulica aleja plac "
    "jalan jl calea aleea bulevardul soseaua odos leoforos"
)
_ATTACHED = (
    "straße strasse str gasse weg allee platz damm ufer steig pfad markt vej gade stræde "
    "allé vænget gatan vägen väg gata gränd stigen torget veien vei veg vegen gaten stien "
    "bakken vegur stræti straeti braut straat laan plein kade gracht singel dreef steeg katu "
    "tie kuja polku väylä utca út útja tér ulice třída náměstí nábřeží cesta ulica"
)


def _alt(words: str, cap: bool | None) -> str:
    """Alternation of ``words``; first letter either case (True), upper case only (None) or
    as written (False). Every branch starts with a literal character so that ``re`` rejects
    a branch in one comparison (a ``[Xx]`` class first makes it try every branch)."""
    forms: set[str] = set()
    for w in words.split():
        if w[0].isalpha() and cap is True:
            forms.update((w[0].upper() + w[1:], w[0].lower() + w[1:]))
        elif w[0].isalpha() and cap is None:
            forms.add(w[0].upper() + w[1:])
        else:
            forms.add(w)
    return "(?:" + "|".join(re.escape(f) for f in sorted(forms, key=lambda f: (-len(f), f))) + ")"


# Street types are capitalised ("Avenue", "St"); "u." (Hungarian utca) is lower case.
_SUFFIX = "(?:" + _alt(_SUFFIX_WORDS, cap=None) + r"|u)\.?(?![\w])"
_PREFIX_NUMBERED = (
    "(?:" + _alt(_PREFIX_WORDS, cap=True) + r"\.?|C/|[Rr]\.|[Rr]|[Aa]l\.|[Pp]l\.|[Pp]lace"
    r"|[Rr]oute|[Pp]assage)(?![\w])"
)
_ATTACHED_WORD = f"{_L}{{2,}}" + _alt(_ATTACHED, cap=False) + r"\.?(?![\w])"
_UNIT = (
    r"(?:Apt|APT|apt|Apartment|Suite|SUITE|suite|Ste|STE|Unit|Flat|Floor|Fl|Room|Rm|Bldg)\.?"
    r"[ ]*#?[ ]*\d{1,6}[A-Za-z]?"
)
_UNIT_STRONG = r"(?:Apt|APT|apt|Apartment|Suite|SUITE|Ste|STE)\.?[ ]*#?[ ]*\d{1,6}[A-Za-z]?"
_POBOX = (
    r"(?:P\.?[ ]?O\.?[ ]?Box|PO[ ]Box|Post(?:office)?[ ]?[Bb]ox|Postbox|Postfach|Apartado)"
    r"[ ]+\d{1,6}"
    r"|PSC[ ]\d{3,5},?[ ]Box[ ]\d{3,5}|Unit[ ]\d{3,5},?[ ]Box[ ]\d{3,5}"
    r"|(?:USNS|USNV|USS|USCGC)[ ]" + _CAP_WORD + r"|(?:APO|FPO|DPO)[ ](?:AA|AE|AP)[ ]\d{5}"
)
_STATES = (
    "AL AK AZ AR CA CO CT DE FL GA HI ID IL IN IA KS KY LA ME MD MA MI MN MS MO MT NE NV NH NJ "
    "NM NY NC ND OH OK OR PA RI SC SD TN TX UT VT VA WA WV WI WY DC PR GU VI AS MP AA AE AP "
    "AB BC MB NB NL NS NT NU ON PE QC SK YT ACT NSW QLD SA TAS VIC WA"
)
_STATE = "(?:" + "|".join(sorted(set(_STATES.split()), key=len, reverse=True)) + ")"
_ZIP = (
    r"(?:\d{5}(?:-\d{4})?|\d{4,5}-\d{3}|\d{2}-\d{3}|\d{3}[ ]\d{2}|\d{3,6}"
    r"|[A-Z]\d[A-Z][ ]?\d[A-Z]\d|[A-Z]{1,2}\d[A-Z\d]?[ ]?\d[A-Z]{2})"
)
_CUE_PHRASES: tuple[str, ...] = tuple(
    p.strip()
    for p in """address|addresses|address is|address was|addresses are|here they are|live at|
    lives at|living at|lived at|live on|lives on|lived on|live in|lives in|lived in|located at|
    location is|meet me at|meet you at|meet us at|meet them at|meet at|meeting at|sent to|
    send it to|send this to|send them to|send mail to|deliver to|delivered to|ship to|
    shipped to|mail to|mailed to|return to|returned to|return it to|moved to|corner of|
    drop you off at|drops you off at|drop me off at|drops me off at|pick me up at|
    pick you up at|taxi to|arrived at|north side of|south side of|east side of|west side of|
    other side of|is on|is at|are on|are at|enter on|stay at|staying at|reside at|resides at|
    residing at|visit me at|visit us at|find me at|find us at|come to|go to|head to|
    billing address|shipping address|home address|mailing address|postal address""".split("|")
)
_ADDRESS_CUES = "|".join(re.escape(p) for p in sorted(_CUE_PHRASES, key=len, reverse=True))
_CORNER = re.compile(
    r"corner of[ ]+((?:the[ ]+)?[^\n,;!?]{3,60}?)[ ]+(?:and|&)[ ]+([^\n,;!?]{3,60}?)"
    r"(?=[ ]+(?:st\.|street)|[.,;!?]|\n|$)"
)
_LINE_START = r"(?:\n[^\w\n]{0,5})"
_SEP = re.compile(r"[ \t]*,?[ \t]*(?:" + _LINE_START + r"(?:\n[^\w\n]{0,5})?)?,?[ \t]*")
_LINE_END = re.compile(r"[ \t]*(?:\n|$|,)")
_SENTENCE_END = re.compile(r"[.!?](?:[ \t\n]|$)")


class _Patterns:
    """Cores and growth segments for one notion of "a name word": capitalised words for
    normal text, any word for all-lower-case text (chat written without capitals)."""

    def __init__(self, lower_case: bool) -> None:
        cap = _ANY_WORD if lower_case else _CAP_WORD
        name = f"(?:{cap}|{_PART})"
        flags = re.I if lower_case else 0
        prefix_bare = (
            _PREFIX_NUMBERED
            if lower_case
            else "(?:" + _alt(_PREFIX_WORDS, cap=None) + r"\.?|C/|R\.|ul\.)(?![\w])"
        )
        c = re.compile
        # Cores start with a digit or a letter class so that ``re`` can skip ahead quickly;
        # what must not precede them is checked in Python (``_NOT_BEFORE``).
        # 24 Clarke Avenue / 1668 Glyn St / 136 Filadelfeos Str.; Villacher Strasse 89
        self.suffix = (
            c(
                f"(?:{_NUM}[ ]+){{1,2}}(?:{cap}[ ]+){{0,3}}{cap}[ ]+{_SUFFIX}"
                f"(?:[ ]+{_NUM}\\.?(?![\\w]))?",
                flags,
            ),
            c(f"(?:{cap}[ ]+){{1,3}}{_SUFFIX}[ ]+{_NUM}\\.?(?![\\w])", flags),
        )
        # Rua do Arenque 1634 / ul. Słowicza 10; 36 rue de pologne / 31 Rue Al Imam Al Bakri
        self.prefix = (
            c(f"{prefix_bare}[ ]+(?:{name}[ ]+){{0,5}}?{cap}[ ]+{_NUM}\\.?(?![\\w])", flags),
            c(
                f"(?:{_NUM}[ ]+){{1,2}}{_PREFIX_NUMBERED}[ ]+(?:{name}[ ]+){{0,4}}?"
                f"(?:{cap}|{_L}{{3,}})(?:[ ]+{_NUM}\\.?(?![\\w]))?",
                flags,
            ),
        )
        # Søndergade 52 / 62314 Mellemvej 32: anchored on the street-type ending, then back.
        self.attached_anchor = c(_alt(_ATTACHED, cap=False) + f"\\.?[ ]+{_NUM}\\.?(?![\\w])", flags)
        self.attached_back = c(f"(?:{_NUM}[ ]+){{0,2}}(?:{cap}[ ]+){{0,2}}{_L}{{2,}}$", flags)
        # Apt. 117 / P.O. Box 242 / PSC 3294, Box 9168 / APO AA 61487
        self.unit = (c(f"(?:{_UNIT_STRONG}|{_POBOX})(?![\\w])", flags),)
        # Springfield, IL 62704: anchored on "IL 62704", then back over the city.
        self.state_anchor = c(f"{_STATE}[ ]+\\d{{5}}(?:-\\d{{4}})?(?![\\w])")
        self.state_back = c(f"(?:{cap}[ ]+){{0,3}}{cap},?[ ]+$")
        # 20789 Allika 46: (building number) street (number), checked with _is_streetlike.
        self.sandwich = c(
            f"({_NUM})[ ]+({cap}(?:[ ]+{name}){{0,3}})[ ]+{_NUM}\\.?(?![\\w]|[.,]\\d)",
            flags,
        )
        self.after_cue = c(
            f"[ \\t]*:?[ \\t]*\\n?[ \\t]*"
            f"((?:{_NUM}[ ]+){{0,2}}{cap}(?:[ ]+{name}){{0,4}}[ ]+{_NUM}\\.?(?![\\w])"
            f"|(?:{_NUM}[ ]+){{1,2}}{cap}(?:[ ]+{name}){{0,4}})",
            flags,
        )
        self.lead = c(f"(?:(?:{_UNIT})[ ]+|{_NUM}[ ]+)$", flags)
        self.segments = (
            c(f"(?:{_UNIT}|{_POBOX})(?![\\w])", flags),
            c(f"{_STATE}(?:[ ]+{_ZIP})?(?![\\w])", flags),
            c(f"{_ZIP}(?![\\w]|[ -]?[0-9])", flags),
        )
        self.place = c(f"{cap}(?:[ ]+(?:{cap}|{_PART})){{0,3}}(?:[ ]+{_ZIP})?(?![\\w])", flags)


_NORMAL = _Patterns(lower_case=False)
_LOWER = _Patterns(lower_case=True)


def _is_streetlike(words: str, strict: bool = False) -> bool:
    """Some word is not a common English word nor a country (the first one, when strict)."""
    toks = [t.strip(".").lower() for t in words.split() if t.strip(".").isalpha()]
    if strict:
        toks = toks[:1]
    if any(t in _MONTHS for t in toks):
        return False  # "14 March 2024" is a date
    return any(t not in COMMON_WORDS and t not in PLACES and t not in NOT_NAME for t in toks)


_NOT_BEFORE = frozenset(".,-_")
_WORD_AT = re.compile(r"[^\W\d_]+")
_MONTHS = frozenset(
    """january february march april may june july august september october november december
    jan feb mar apr jun jul aug sep sept oct nov dec""".split()
)
_DIGIT_SPACE_CAP = re.compile(r"[0-9][ ]+(?=[^\W\d_])(?![a-z])")
_DIGIT_SPACE_ANY = re.compile(r"[0-9][ ]+(?=[^\W\d_])")


def _free_start(text: str, s: int) -> bool:
    return s == 0 or not (text[s - 1].isalnum() or text[s - 1] in _NOT_BEFORE)


def _core_span(text: str, m: re.Match[str]) -> Span | None:
    return (m.start(), m.end(), STREET_ADDRESS) if _free_start(text, m.start()) else None


# Parts that stand for one regex of a family ("suffix" runs both): each has its own trigger.
_ONE_REGEX: dict[str, tuple[str, int]] = {
    "suffix_number_first": ("suffix", 0),
    "suffix_name_first": ("suffix", 1),
    "prefix_word_first": ("prefix", 0),
    "prefix_number_first": ("prefix", 1),
}


# Words that are in no street name but often between a number and "dr"/"st"/"ct" in notes.
_NOT_STREET_WORDS = frozenset("or less more than per to for with x mg ml cc mcg units unit".split())


def _cores(part: str, text: str, lowered: str, pats: _Patterns) -> list[tuple[int, int]]:
    strict = pats is _LOWER
    cores: list[tuple[int, int]] = []
    if part in ("suffix", "prefix", "unit") or part in _ONE_REGEX:
        family, index = _ONE_REGEX.get(part, (part, -1))
        regexes: tuple[re.Pattern[str], ...] = getattr(pats, family)
        for rx in regexes if index < 0 else regexes[index : index + 1]:
            found = scan(rx, text, lambda m: _core_span(text, m))
            cores.extend((a, b) for a, b, _ in found)
        if strict and family == "suffix":
            # Lower-case notes: "sbp 120 or less per dr." is no street ("dr" = doctor).
            cores = [(a, b) for a, b in cores if _NOT_STREET_WORDS.isdisjoint(
                lowered[a:b].split())]  # fmt: skip
    elif part == "attached":
        for m in pats.attached_anchor.finditer(text):
            back = pats.attached_back.search(text, max(0, m.start() - 64), m.start())
            if back and _free_start(text, back.start()):
                cores.append((back.start(), m.end()))
    elif part == "state":
        for m in pats.state_anchor.finditer(text):
            if m.start() == 0 or text[m.start() - 1] not in " ,":
                continue
            back = pats.state_back.search(text, max(0, m.start() - 80), m.start())
            if back and _free_start(text, back.start()):
                cores.append((back.start(), m.end()))
    elif part == "sandwich":
        # Anchored on "<digit><spaces><not lower case>" (a plain finditer of the sandwich
        # pattern tries it at every digit: 5x slower on text full of numbers).
        for a in (_DIGIT_SPACE_ANY if strict else _DIGIT_SPACE_CAP).finditer(text):
            word = _WORD_AT.match(text, a.end())
            if word and word.group().lower() in _MONTHS:
                continue  # "14 March 2024": a date
            start = a.start()
            while start > 0 and (text[start - 1].isalnum() or text[start - 1] in "/-"):
                start -= 1
            sw = pats.sandwich.match(text, start)
            if sw and _free_start(text, start) and _is_streetlike(sw.group(2), strict):
                cores.append(sw.span())
    elif part == "cue":
        for end in _cue_ends(lowered):
            after = pats.after_cue.match(text, end)
            if after and _is_streetlike(after.group(1).lstrip("0123456789 "), strict):
                cores.append(after.span(1))
    elif part == "corner":
        for m in _CORNER.finditer(lowered):
            for g in (1, 2):
                s, e = m.span(g)
                seg = text[s:e]
                if seg.lower().startswith("the "):
                    s += 4
                    seg = seg[4:]
                if "{" in seg or not any(c.isalpha() for c in seg) or len(seg.split()) > 6:
                    continue
                if strict or any(c.isupper() for c in seg):
                    cores.append((s, e))
    return cores


def _cue_ends(lowered: str) -> list[int]:
    """End offsets of the address phrases (plain substring search: an alternation of 60
    phrases costs ~150 µs per KB in ``re``, ``str.find`` ~0.2 µs per phrase)."""
    ends = []
    for phrase in _CUE_PHRASES:
        i = lowered.find(phrase)
        while i >= 0:
            end = i + len(phrase)
            if (i == 0 or not lowered[i - 1].isalnum()) and (
                end == len(lowered) or not lowered[end].isalnum()
            ):
                ends.append(end)
            i = lowered.find(phrase, i + 1)
    return ends


_PARTS = ("suffix", "prefix", "attached", "unit", "state", "sandwich", "cue", "corner")


def _find(text: str, low: str | None, parts: tuple[str, ...], lower_case: bool) -> list[Span]:
    if lower_case:
        if not text.islower():
            return []
        if " " not in text:
            # Every lower-case core but a unit ("apt5") needs a space (each regex has a
            # literal [ ]): short values such as "app-7" then cost one regex, not eight.
            parts = tuple(p for p in parts if p == "unit")
        elif text.isascii():
            parts = _lower_case_parts(text, parts)
    pats = _LOWER if lower_case else _NORMAL
    lowered = low if low is not None and len(low) == len(text) else text.lower()
    cores = sorted(c for part in parts for c in _cores(part, text, lowered, pats))
    if not cores:
        return []
    grown: list[tuple[int, int]] = []
    for core in cores:
        if grown and core[1] <= grown[-1][1]:
            continue  # inside an address already grown (keeps long inputs linear)
        grown.append(_grow(text, core, pats))
    return [(s, e, STREET_ADDRESS) for s, e in _merge(grown)]


# Gates for the costliest lower-case cores: case-insensitive alternations that ``re`` tries at
# every position (~140-650 µs each on a 650-character window of lower-case code). Each core holds
# its street word as a whole run of letters (a space or a non-word character before and
# after it, or a free start), so a text without such a run cannot give one. ASCII text only:
# there every letter run is [a-z]+ and re.I folds nothing else onto these words (on other
# text "ſt" matches "st" under re.I).
_ASCII_LETTERS = re.compile(r"[a-z]+")
_SUFFIX_RUNS = frozenset(_SUFFIX_WORDS.split()) | {"u"}
# _PREFIX_NUMBERED: the words, "C/", "R.", "R", "Al.", "Pl.", "Place", "Route", "Passage".
_PREFIX_RUNS = frozenset(_PREFIX_WORDS.split() + "c r al pl place route passage".split())
# The attached street type ends a run that has at least two letters before it (attached_back).
_ATTACHED_ENDINGS = tuple(_ATTACHED.split())
# _UNIT_STRONG and _POBOX: every post-box form holds "box", the others start with one of these.
_UNIT_RUNS = frozenset(
    "apt apartment suite ste postfach apartado usns usnv uss uscgc apo fpo dpo".split()
)


def _lower_case_parts(text: str, parts: tuple[str, ...]) -> tuple[str, ...]:
    """``parts`` without the costly lower-case cores that cannot match the all-lower-case
    ASCII ``text`` (the others are cheap, or anchored on digits)."""
    runs = set(_ASCII_LETTERS.findall(text))
    keep = []
    for part in parts:
        if part == "suffix":
            # After a space ("12 main st", "main st 12").
            ok = any(_run_after_space(text, w) for w in runs.intersection(_SUFFIX_RUNS))
        elif part == "prefix":
            # Before a space, a dot and a space, or "/" and a space ("c/ mayor 5").
            ok = any(_run_before_space(text, w) for w in runs.intersection(_PREFIX_RUNS))
        elif part == "attached":
            ok = any(run[2:].endswith(_ATTACHED_ENDINGS) for run in runs)
        elif part == "unit":
            ok = "box" in text or not runs.isdisjoint(_UNIT_RUNS)
        else:
            ok = True
        if ok:
            keep.append(part)
    return tuple(keep)


def _run_after_space(text: str, word: str) -> bool:
    """``word`` as a whole run of letters right after a space (ASCII ``text``)."""
    probe = " " + word
    end = len(probe)
    i = text.find(probe)
    while i >= 0:
        if i + end == len(text) or not text[i + end].isalpha():
            return True
        i = text.find(probe, i + 1)
    return False


def _run_before_space(text: str, word: str) -> bool:
    """``word`` as a whole run of letters followed by " ", ". " or "/ " (ASCII ``text``)."""
    for probe in (word + " ", word + ". ", word + "/ "):
        i = text.find(probe)
        while i >= 0:
            if i == 0 or not text[i - 1].isalpha():
                return True
            i = text.find(probe, i + 1)
    return False


def _finder(parts: tuple[str, ...], lower_case: bool) -> Callable[[str, str | None], list[Span]]:
    def find(text: str, low: str | None) -> list[Span]:
        return _find(text, low, parts, lower_case)

    return find


def _fired_finder(
    parts_per_trigger: tuple[tuple[str, ...], ...],
) -> Callable[[str, str | None, frozenset[int]], list[Span]]:
    """``Detector.find_fired``: only the parts whose trigger fired (``parts_per_trigger[i]``
    for trigger ``i``). The cores are sorted before growing, so the result is the same as
    with every part: a skipped part has no core."""

    def find_fired(text: str, low: str | None, fired: frozenset[int]) -> list[Span]:
        parts = tuple(p for i, ps in enumerate(parts_per_trigger) if i in fired for p in ps)
        return _find(text, low, parts, False) if parts else []

    return find_fired


def find_addresses(text: str, low: str | None) -> list[Span]:
    """Every address rule at once (tests and tools; the redactor runs them per trigger)."""
    spans = _finder(_PARTS, lower_case=False)(text, low) + _finder(_PARTS, True)(text, low)
    return [(s, e, STREET_ADDRESS) for s, e in _merge((s, e) for s, e, _ in spans)]


_T = Trigger
_D = DIGIT  # the finders' ``\d`` (_NUM, _UNIT, _POBOX, state ZIP) is Unicode
# Word edges for triggers; byte-oriented engines have no Unicode \b, so: "not an ASCII letter".
_START = r"(?:^|[^A-Za-z0-9_.-])"
_END = r"(?:[^A-Za-z]|$)"
_SUFFIX_ALT = "(?:" + _alt(_SUFFIX_WORDS, cap=None) + "|u)"
_PREFIX_ALT = (
    "(?:"
    + _alt(_PREFIX_WORDS, cap=True)
    + r"|C/|[Rr]\.|[Aa]l\.|[Pp]l\.|[Pp]lace|[Rr]oute|[Pp]assage|[Rr])"
)
_PREFIX_BARE_ALT = "(?:" + _alt(_PREFIX_WORDS, cap=None) + r"|C/|R\.|ul\.)"
_ASCII_NON_LETTER = r"\x00-\x40\x5b-\x60\x7b-\x7f"


def _not_a_month(prefix: str = "") -> str:
    r"""Trigger text for the rest of a word that starts with the ASCII letters ``prefix`` (of
    a month name, either case) and is not a month: the sandwich finder skips "14 March 2024"
    (a date), the commonest sandwich in prose, so its trigger need not fire on it. The
    finder's word is a run of letters compared lower-cased with _MONTHS (only ASCII letters
    lower-case to a month's letters); here: any other letter or any non-ASCII character (it
    may be a letter) leaves the months; an ASCII non-letter ends the letters, a month only
    after a full month name. Every branch then takes the rest of the word as the old trigger
    did (``[^\s0-9]*``), so the trigger only misses texts whose first word is a month."""
    depth = len(prefix)
    children = sorted({m[depth] for m in _MONTHS if len(m) > depth and m.startswith(prefix)})
    cases = "".join(c + c.upper() for c in children)
    alts = [f"[^{_ASCII_NON_LETTER}{cases}][^\\s0-9]*"]
    alts += [f"[{c.upper()}{c}]" + _not_a_month(prefix + c) for c in children]
    if prefix not in _MONTHS:
        alts.append(f"(?:[{_ASCII_NON_LETTER}][^\\s0-9]*)?")
    return "(?:" + "|".join(alts) + ")"


# The first word of a sandwich: as "[^\s0-9a-z][^\s0-9]*", but not a month.
_MONTH_INITIALS = "".join(sorted({m[0].upper() for m in _MONTHS}))
_SANDWICH_FIRST = (
    f"(?:[^\\s0-9a-z{_MONTH_INITIALS}][^\\s0-9]*"
    + "".join(f"|{c}" + _not_a_month(c.lower()) for c in _MONTH_INITIALS)
    + ")"
)
# Engine triggers (supersets of the cores, see _engine): one detector per family of rules so
# that a trigger only runs the regexes it stands for; the suffix and prefix families have one
# trigger per regex (``find_fired``: "The Amazon River" fires the number-first one only).
DETECTORS: tuple[Detector, ...] = (
    Detector(
        "address_suffix",
        (
            # suffix[0]: its last house number ("12", "12a", "3/4b"), 1-4 words, street type.
            _T(_D + r"[A-Za-z]?[ ]+(?:[^\s0-9]+[ ]+){0,4}" + _SUFFIX_ALT + _END),
            # suffix[1]: the space before the street type, the type, the number.
            _T(r"[ ]" + _SUFFIX_ALT + r"\.?[ ]+" + _D),
        ),
        _finder(("suffix",), False),
        find_fired=_fired_finder((("suffix_number_first",), ("suffix_name_first",))),
    ),
    Detector(
        "address_prefix",
        (
            # prefix[0]: an accepted core starts after a non-word character (_free_start).
            _T(_START + _PREFIX_BARE_ALT + r"\.?[ ]"),
            # prefix[1]: its last house number, the street-type prefix.
            _T(_D + r"[A-Za-z]?[ ]+" + _PREFIX_ALT + r"\.?" + _END),
        ),
        _finder(("prefix",), False),
        find_fired=_fired_finder((("prefix_word_first",), ("prefix_number_first",))),
    ),
    Detector(
        "address_attached",
        (_T(_alt(_ATTACHED, cap=False) + r"\.?[ ]+" + _D),),
        _finder(("attached",), False),
    ),
    Detector(
        "address_unit",
        (
            _T(r"(?:apt|apartment|suite|ste)\.?[ ]*#?[ ]*" + _D, caseless=True),
            _T(
                r"(?:box|postfach|apartado)[ ]+" + _D + r"|(?:usns|usnv|uss|uscgc)[ ]",
                caseless=True,
            ),
            _T(r"(?:APO|FPO|DPO)[ ](?:AA|AE|AP)[ ]" + _D),
        ),
        _finder(("unit",), False),
    ),
    Detector(
        "address_state",
        (_T(r"[ ,](?:" + _STATE + r")[ ]+" + _D + "{5}"),),
        _finder(("state",), False),
    ),
    Detector(
        "address_sandwich",
        (_T(r"[0-9][ ]+" + _SANDWICH_FIRST + r"(?:[ ]+[^\s0-9]+){0,3}[ ]+" + _D),),
        _finder(("sandwich",), False),
    ),
    Detector(
        "address_cue",
        (
            # after_cue: a number, or a capitalised word and at most four more words (no
            # whitespace inside a word, spaces between), then a number. Counted in words, not
            # as "[^\n]{0,200}": a DFA tracks such a window as the set of offsets of every cue
            # in it, and these sets, multiplied by the other triggers' states, made RE2::Set
            # build new DFA states on most unseen texts (~100 µs per text, 200+ MB of cache).
            _T(
                r"(?i:" + _ADDRESS_CUES + r")[ \t]*:?[ \t]*\n?[ \t]*"
                r"(?:[0-9]|[^\sa-z0-9][^\s]*(?:[ ]+[^\s]+){0,4}[ ]+[0-9])"
            ),
            # The same for the other digits of ``\d``: any such digit, cue or not (3 of 20,000
            # unseen windows hold one). A cue followed by "[^\n]*(?:\n[^\n]*)?" and such a
            # digit made RE2::Set carry every cue ("is on", "go to") over two lines: new DFA
            # states on most unseen texts, ~9 us of its ~30 per text.
            _T(NON_ASCII_DIGIT),
            # "İ" is the one character whose lower case is longer: the cue offsets, found in
            # the lower-cased text, then drift from the text the words above are matched in.
            _T("\u0130"),
        ),
        _finder(("cue",), False),
    ),
    Detector("address_corner", (_T(r"corner of", caseless=True),), _finder(("corner",), False)),
    # Every lower-case rule needs a (Unicode) digit, "corner of" or a ship prefix ("uss
    # enterprise": the military-address rule): the engine answers that in the scan it makes
    # anyway, and ``islower`` (another pass over the text) only runs after it. The digit
    # trigger is anchored to text without ASCII capitals so that it does not fire on
    # ordinary prose (its DFA thread dies at the first capital).
    Detector(
        "address_lower_case",
        (
            _T(r"^[^A-Z]*" + _D + r"[^A-Z]*$"),
            _T(r"corner of"),
            _T(r"(?:usns|usnv|uss|uscgc)[ ]", caseless=True),
        ),
        _finder(_PARTS, True),
        gate=str.islower,
    ),
)


def _grow(text: str, core: tuple[int, int], pats: _Patterns) -> tuple[int, int]:
    s, e = core
    for _ in range(3):  # a unit and/or building number or two in front
        m = pats.lead.search(text, max(0, s - 24), s)
        if not m or m.start() == s:
            break
        s = m.start()
    for _ in range(6):
        sep = _SEP.match(text, e)
        if sep is None:
            break
        pos = sep.end()
        newline = "\n" in sep.group()
        comma = "," in sep.group()
        if pos >= len(text) or sep.group() == "":
            break
        grown = None
        for rx in pats.segments:
            m = rx.match(text, pos)
            if m and (not newline or _LINE_END.match(text, m.end())):
                grown = m.end()
                break
        if grown is None and (newline or comma):
            m = pats.place.match(text, pos)
            if m:
                end = m.end()
                if text[end - 1] == "." and _SENTENCE_END.match(text, end - 1):
                    grown = end - 1  # "..., Springfield. Next sentence"
                elif _LINE_END.match(text, end) or _SENTENCE_END.match(text, end):
                    grown = end
        if grown is None:
            break
        e = grown
    if e - s > 6 and text[e - 1] == "." and text[e - 5 : e - 1].isalpha():
        e -= 1  # a sentence full stop, not an abbreviation ("St.", "u. 12.")
    return s, e


def _merge(spans: object) -> list[tuple[int, int]]:
    items = sorted(spans)  # type: ignore[call-overload]
    out: list[tuple[int, int]] = []
    for s, e in items:
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out
