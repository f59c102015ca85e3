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

from ._lexicon import COMMON_WORDS, PLACES
from ._names import LO, UP
from ._types import STREET_ADDRESS, Span, Trigger

_L = f"[{UP}{LO}]"
_CAP_WORD = f"(?:[{UP}]['’]?{_L}*[{LO}]{_L}*\\.?|[{UP}]{{2,}}\\b)"  # Word, Word., O'Neil, SPÅNGA
_ANY_WORD = f"(?:{_L}+\\.?)"
_NUM = r"\d{1,6}(?:[A-Ha-h](?![A-Za-z]))?(?:[/-]\d{1,4}[A-Za-z]?)?"
_PART = (
    r"(?:de|des|du|do|dos|da|das|del|della|dei|degli|di|la|le|les|el|al|van|von|der|den|z|ze"
    r"|nad|pod|na|u|i|e|y|of|the|on|an)"
)
_SUFFIX_WORDS = (
    "street st str avenue ave av road rd lane ln drive dr boulevard blvd court ct place pl way "
    "terrace ter parkway pkwy highway hwy square sq loop mall gateway park parks hill hills isle "
    "trail trl circle cir crescent cres close row alley walk path pike plaza point port ridge run "
    "landing heights grove gardens garden green glen fort ford falls estate estates expressway "
    "extension ferry field fields flat flats freeway junction knoll lake lakes manor meadow "
    "meadows mews mill mills mission motorway mount mountain orchard oval pass passage plain "
    "plains prairie ranch rapids rest river route rte shoal shoals shore shores skyway spring "
    "springs spur station stravenue stream summit throughway trace track tunnel turnpike union "
    "valley via viaduct view villages village ville vista wall well wells wharf wynd quay parade "
    "esplanade promenade rise chase bend bluff bluffs branch bridge brook brooks burg burgs bypass "
    "camp canyon cape causeway center centre cliff cliffs club common commons corner corners "
    "course courts cove creek crest crossing crossroad curve dale dam divide drives forest forge "
    "fork forks harbor harbour haven hollow inlet island islands key keys light lights lock "
    "locks lodge neck overpass pines points ports radial ramp underpass unions views ways "
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
    as written (False)."""
    parts = []
    for w in sorted(set(words.split()), key=len, reverse=True):
        esc = re.escape(w)
        if w[0].isalpha() and cap is True:
            parts.append(f"[{w[0].upper()}{w[0]}]{esc[1:]}")
        elif w[0].isalpha() and cap is None:
            parts.append(f"{w[0].upper()}{esc[1:]}")
        else:
            parts.append(esc)
    return "(?:" + "|".join(parts) + ")"


_SUFFIX = _alt(_SUFFIX_WORDS, cap=True) + r"\.?(?![\w])"
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
_ADDRESS_CUES = (
    r"address(?:es)?(?:[ ]is|[ ]was)?|addresses are|here they are|live at|lives at|living at|"
    r"lived at|live on|lives on|lived on|live in|lives in|lived in|located at|location is|"
    r"meet (?:me|you|us|them) at|meet at|meeting at|sent to|send (?:it|this|them|mail) to|"
    r"deliver(?:ed)? to|ship(?:ped)? to|mail(?:ed)? to|return(?:ed)? (?:it )?to|moved to|"
    r"corner of|drops? (?:you|me|us) off at|pick (?:me|you|us) up at|taxi to|arrived at|"
    r"(?:north|south|east|west|other) side of|is on|is at|are on|are at|enter on|"
    r"is located at|stay(?:ing)? at|resides? at|residing at|visit (?:me|us) at|"
    r"find (?:me|us) at|come to|go to|head to|billing address|shipping address|home address|"
    r"mailing address|postal address"
)
_CUE = re.compile(r"(?:" + _ADDRESS_CUES + r")\b")
_CORNER = re.compile(
    r"corner of[ ]+((?:the[ ]+)?[^\n,;!?]{3,60}?)[ ]+(?:and|&)[ ]+([^\n,;!?]{3,60}?)"
    r"(?=[ ]+(?:st\.|street)|[.,;!?]|\n|$)"
)
_LINE_START = r"(?:\n[^\w\n]{0,5})"
_SEP = re.compile(r"[ \t]*,?[ \t]*(?:" + _LINE_START + r"(?:\n[^\w\n]{0,5})?)?,?[ \t]*")
_LINE_END = re.compile(r"[ \t]*(?:\n|$|,)")


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
        self.cores = (
            # 24 Clarke Avenue / 1668 Glyn St / 136 Filadelfeos Str.
            c(
                f"(?<![\\w.,-])(?:{_NUM}[ ]+){{1,2}}(?:{cap}[ ]+){{0,3}}{cap}[ ]+{_SUFFIX}"
                f"(?:[ ]+{_NUM}\\.?(?![\\w]))?",
                flags,
            ),
            # Villacher Strasse 89 / Erzsébet tér 19.
            c(f"(?<![\\w.-])(?:{cap}[ ]+){{1,3}}{_SUFFIX}[ ]+{_NUM}\\.?(?![\\w])", flags),
            # Rua do Arenque 1634 / ul. Słowicza 10
            c(
                f"(?<![\\w.-]){prefix_bare}[ ]+(?:{name}[ ]+){{0,5}}?{cap}[ ]+{_NUM}\\.?(?![\\w])",
                flags,
            ),
            # 36 rue de pologne / 31 Rue Al Imam Al Bakri
            c(
                f"(?<![\\w.-])(?:{_NUM}[ ]+){{1,2}}{_PREFIX_NUMBERED}[ ]+(?:{name}[ ]+){{0,4}}?"
                f"(?:{cap}|{_L}{{3,}})(?:[ ]+{_NUM}\\.?(?![\\w]))?",
                flags,
            ),
            # Søndergade 52 / 62314 Mellemvej 32
            c(
                f"(?<![\\w.-])(?:{_NUM}[ ]+){{0,2}}(?:{cap}[ ]+){{0,2}}{_ATTACHED_WORD}[ ]+{_NUM}"
                f"\\.?(?![\\w])",
                flags,
            ),
            # Apt. 117 / P.O. Box 242 / PSC 3294, Box 9168 / APO AA 61487
            c(f"(?<![\\w.-])(?:{_UNIT_STRONG}|{_POBOX})(?![\\w])", flags),
            # Springfield, IL 62704
            c(
                f"(?<![\\w])(?:{cap}[ ]+){{0,3}}{cap},?[ ]+{_STATE}[ ]+\\d{{5}}(?:-\\d{{4}})?"
                f"(?![\\w])"
            ),
        )
        # 20789 Allika 46: (building number) street (number), checked with _is_streetlike.
        self.sandwich = c(
            f"(?<![\\w.,-])({_NUM})[ ]+({cap}(?:[ ]+{name}){{0,3}})[ ]+{_NUM}\\.?(?![\\w]|[.,]\\d)",
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
            c(f"{_ZIP}(?![\\w])", flags),
        )
        self.place = c(f"{cap}(?:[ ]+(?:{cap}|{_PART})){{0,3}}(?:[ ]+{_ZIP})?(?![\\w])", flags)


_NORMAL = _Patterns(lower_case=False)
_LOWER = _Patterns(lower_case=True)

TRIGGERS: tuple[Trigger, ...] = (
    Trigger(r"[0-9][ ]+[^\n]{0,40}\b" + _alt(_SUFFIX_WORDS, cap=True) + r"\b"),
    Trigger(r"\b" + _alt(_PREFIX_WORDS, cap=True) + r"\.?[ ]+[^\n]{0,50}[0-9]"),
    Trigger(_alt(_ATTACHED, cap=False) + r"\.?[ ]+[0-9]"),
    Trigger(r"[0-9][ ]+[^\s0-9a-z][^\n]{0,45}[ ][0-9]"),
    Trigger(r"(?:apt|apartment|suite|ste)\.?[ ]*#?[ ]*[0-9]", True),
    Trigger(r"(?:box|postfach|apartado)[ ]+[0-9]|(?:usns|usnv|uss|uscgc)[ ]", True),
    Trigger(r"(?:APO|FPO|DPO)[ ](?:AA|AE|AP)[ ][0-9]"),
    Trigger(r"[ ,](?:" + _STATE + r")[ ]+[0-9]{5}"),
    Trigger(r"(?:" + _ADDRESS_CUES + r")[^\n]{0,3}\n?[^\n]{0,50}[0-9]", True),
    Trigger(r"corner of", True),
)


def _is_streetlike(words: str, strict: bool = False) -> bool:
    """Some word is not a common English word nor a country (the first one, when strict)."""
    toks = [t.strip(".").lower() for t in words.split() if t.strip(".").isalpha()]
    if strict:
        toks = toks[:1]
    return any(t not in COMMON_WORDS and t not in PLACES for t in toks)


def find_addresses(text: str, low: str | None) -> list[Span]:
    lowered = low if low is not None and len(low) == len(text) else text.lower()
    pats = _LOWER if text.islower() else _NORMAL
    cores: list[tuple[int, int]] = []
    for rx in pats.cores:
        cores.extend(m.span() for m in rx.finditer(text))
    strict = pats is _LOWER
    for m in pats.sandwich.finditer(text):
        if _is_streetlike(m.group(2), strict):
            cores.append(m.span())
    for cue in _CUE.finditer(lowered):
        after = pats.after_cue.match(text, cue.end())
        if after and _is_streetlike(after.group(1).lstrip("0123456789 "), strict):
            cores.append(after.span(1))
    for m in _CORNER.finditer(lowered):
        for g in (1, 2):
            s, e = m.span(g)
            seg = text[s:e]
            if seg.lower().startswith("the "):
                s += 4
                seg = seg[4:]
            if "{" in seg or not any(c.isalpha() for c in seg) or len(seg.split()) > 6:
                continue
            if pats is _LOWER or any(c.isupper() for c in seg):
                cores.append((s, e))
    if not cores:
        return []
    return [(s, e, STREET_ADDRESS) for s, e in _merge(_grow(text, c, pats) for c in cores)]


def _grow(text: str, core: tuple[int, int], pats: _Patterns) -> tuple[int, int]:
    s, e = core
    while True:
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
            if m and _LINE_END.match(text, m.end()):
                grown = m.end()
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
