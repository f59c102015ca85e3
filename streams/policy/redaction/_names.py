"""R11 people's names without a statistical model.

Evidence, combined per run of capitalised words ("chunk") on one line:

* the name lexicon (``_lexicon``: first names and surnames from Faker and the US Census,
  minus words that are common in English prose, which only count with more evidence);
* titles (Mr, Mrs, Dr, ...) and context phrases before the chunk ("my name is", "Dear",
  "Hi", "called", "Name:", "said", ...), which also admit names missing from the lexicon;
* shape: a known first name followed by an unknown capitalised word ("Daniel Janíček"),
  middle initials ("Sari J. Paavolainen") and particles ("Rua de", "van der").

Cheap gate first: the lexicon is looked up for the capitalised words of the text (one C-level
``findall`` and a set intersection); the chunk analysis only runs on a hit or when the engine
reports a context phrase.
"""

from __future__ import annotations

import re

from ._anycase import CLINICAL
from ._lexicon import COMMON_WORDS, FIRST_NAMES, HONORIFICS, NOT_NAME, PLACES, SURNAMES
from ._types import PERSON, Span, Trigger


def _char_class(predicate: object, ranges: tuple[tuple[int, int], ...]) -> str:
    chars = [chr(c) for lo, hi in ranges for c in range(lo, hi + 1)]
    picked = [c for c in chars if predicate(c)]  # type: ignore[operator]
    out: list[str] = []
    i = 0
    while i < len(picked):
        j = i
        while j + 1 < len(picked) and ord(picked[j + 1]) == ord(picked[j]) + 1:
            j += 1
        a, b = re.escape(picked[i]), re.escape(picked[j])
        out.append(a if i == j else f"{a}-{b}")
        i = j + 1
    return "".join(out)


_RANGES = ((0x41, 0x24F), (0x370, 0x52F), (0x1E00, 0x1EFF))
UP = _char_class(str.isupper, _RANGES)
LO = _char_class(str.islower, _RANGES)

# A capitalised word: "Anna", "O'Brien", "McDonald", "Jean-Pierre", "D'Angelo".
_WORD = f"[{UP}](?:['’][{UP}])?[{LO}]+(?:[{UP}][{LO}]+)?(?:-[{UP}][{LO}]+)?"
_GATE = re.compile(f"[{UP}][{LO}]+")
_INITIAL = f"[{UP}]\\.?"
_PARTICLE = r"(?:van|von|der|den|de|da|das|do|dos|del|della|di|du|la|le|ter|ten|bin|ibn|al|el|y)"
_CHUNK = re.compile(
    f"{_WORD}(?:(?:[ ]{_PARTICLE})*[ ](?:{_WORD}|{_INITIAL}(?=[ ]{_WORD})))*"
    f"(?![\\w@-]|['’](?![sS]\\b)|\\.\\w)"
)
_TOKEN = re.compile(f"{_WORD}|{_INITIAL}|{_PARTICLE}")

STRONG_CUES = (
    r"my name is|my name's|name is|name was|names? are|name:|name\?|named|called|call me|"
    r"dear|hi|hello|hey|hiya|greetings|thanks|thank you|regards|sincerely|cheers|"
    r"signed|yours|attn:?|attention:?|c/o|cc:|from:|to:|contact:|author:|by|"
    r"said|says|asked|told|wrote|replied|starring|featuring|"
    r"(?:my|our|his|her|their|your) (?:wife|husband|son|daughter|brother|sister|friend|partner|"
    r"boss|mother|father|mom|mum|dad|uncle|aunt|cousin|colleague|kid|child|grandson|"
    r"granddaughter|grandmother|grandfather|niece|nephew|fiancée?|girlfriend|boyfriend|"
    r"neighbou?r|doctor|lawyer|manager|teacher|student|patient|client|tenant|landlord)"
)
_STRONG_BEFORE = re.compile(r"(?:^|[^\w])(?:" + STRONG_CUES + r")[ \t]*[:,]?[ \t]*$")
_HONORIFIC_BEFORE = re.compile(
    r"(?:^|[^\w])(?:" + "|".join(sorted(HONORIFICS, key=len, reverse=True)) + r")\.?[ \t]+$"
)
_LOWER_NAME_AFTER = re.compile(
    r"(?:my name is|my name's|name:|call me)[ \t]+"
    f"([{LO}]{{2,}}(?:[ ][{LO}]{{2,}})?)"
)
_SPEAKER_AFTER = re.compile(r"[ \t]*:[ \t]*[\"“]")
_COORD = re.compile(r"^(?:,[ ]*(?:and[ ]+|or[ ]+|&[ ]+)?|[ ]+(?:and|or|&|und|et|y)[ ]+)$")
_LINE_PREFIX = re.compile(r"(?:^|\n)[ \t>*•-]*$")
_LINE_SUFFIX = re.compile(r"[ \t]*(?:\n|$)")
_SURNAME_ENDINGS = tuple(
    """ov ova ev eva ski ska sky skaya skiy ić ič ová enko chuk shvili dze yan sson dóttir dottir
    poulos akis escu oğlu inen wicz czyk ovich evich yev iev ayev ský ská ovna evna""".split()
)

# Engine triggers: context phrases followed by something that is not a lower-case word.
# "An upper-case letter": A-Z or any non-ASCII character (a UTF-8 byte >= 0x80 for
# byte-oriented engines), so "[PERSON]" or "(" after a cue does not fire.
_UPPER_ISH = r"[^\x00-\x40\x5b-\x7f]"
_LETTER_ISH = r"[^\x00-\x40\x5b-\x60\x7b-\x7f]"
_WORD_START = r"(?:^|[^A-Za-z])"  # the cues must start a word ("hi", not "this")
TRIGGERS: tuple[Trigger, ...] = (
    Trigger(_WORD_START + r"(?i:my name is|my name's|name:|call me)[ \t]+" + _LETTER_ISH),
    Trigger(_WORD_START + r"(?i:" + STRONG_CUES + r")[ \t]*[:,]?[ \t]*" + _UPPER_ISH),
    Trigger(_WORD_START + r"(?i:" + "|".join(sorted(HONORIFICS)) + r")\.?[ \t]+" + _UPPER_ISH),
)

# Fires on text without an ASCII capital letter: all-lower-case ASCII text then skips the
# lexicon gate (which needs a capitalised word) after a cheap check (``Redactor.detect``).
# Inverted on purpose: "[A-Z][a-z]" would fire on nearly all prose, and every fired trigger
# costs in the engine and in ``detect``, while this one dies at the first capital. (``$`` may
# match before a final newline in some engines: a newline is no capital either.)
NO_CAPITALS = Trigger(r"^[^A-Z]+$")

_NAMES = FIRST_NAMES | SURNAMES
# Surnames that are clinical words, interjections or brands ("Foley catheter", "Swan-Ganz",
# "Oh", "Toyota"): a name only with more evidence ("Dr. Foley"), like "Will" or "May".
_LOOKS_LIKE_WORD: frozenset[str] = CLINICAL
_TITLE_KEYS: frozenset[str] = frozenset(
    n[:1].upper() + n[1:]
    for n in _NAMES
    if n not in COMMON_WORDS and n not in NOT_NAME and n not in PLACES and n not in CLINICAL
)


def gate(text: str) -> bool:
    """True when some capitalised word of ``text`` is an unambiguous lexicon name."""
    return not _TITLE_KEYS.isdisjoint(_GATE.findall(text))


# Kinds of the words seen so far: the same capitalised words recur from text to text ("None",
# "Returns", "Python"), and a kind costs several set lookups and string copies. Bounded
# (cleared when full); a dict's get and set are atomic, so threads can share it.
_KINDS: dict[str, str] = {}
_KINDS_MAX = 1 << 16


def _kind(token: str) -> str:
    """``_kind_of(token)``, remembered."""
    kind = _KINDS.get(token)
    if kind is None:
        kind = _kind_of(token)
        if len(_KINDS) >= _KINDS_MAX:
            _KINDS.clear()
        _KINDS[token] = kind
    return kind


def _kind_of(token: str) -> str:
    """'F' first name, 'S' surname, 'A' ambiguous (name that is also a word/place), 'C' common
    word or stop word, 'M' unknown word with a surname ending (-ova, -sson, -inen, ...),
    'U' other unknown capitalised word, 'I' initial, 'P' particle."""
    low = token.lower()
    if low in NOT_NAME or low in HONORIFICS:
        return "C"
    if len(token) <= 2 and token.endswith(".") or len(token) == 1:
        return "I"
    if token.islower():
        return "P"
    parts = low.replace("’", "'").split("-")
    if any(p in _NAMES for p in parts):
        if any(p in COMMON_WORDS or p in PLACES or p in _LOOKS_LIKE_WORD for p in parts):
            return "A"
        return "F" if any(p in FIRST_NAMES for p in parts) else "S"
    if low in COMMON_WORDS or low in PLACES or _plural_of_word(low):
        return "C"
    base = low.split("'")[-1]
    if base in _NAMES and base not in COMMON_WORDS:
        return "S"
    if len(low) >= 5 and low.endswith(_SURNAME_ENDINGS):
        return "M"
    return "U"


def _plural_of_word(low: str) -> bool:
    if not low.endswith("s") or len(low) < 4:
        return False
    if low.endswith("ies"):
        return low[:-3] + "y" in COMMON_WORDS
    return low[:-1] in COMMON_WORDS or (low.endswith("es") and low[:-2] in COMMON_WORDS)


class _Chunk:
    __slots__ = ("start", "end", "kinds", "words", "status")

    def __init__(self, start: int, end: int, kinds: list[str], words: list[str]) -> None:
        self.start, self.end, self.kinds, self.words = start, end, kinds, words
        self.status = ""  # "yes", "maybe" (needs support), "line" (needs contact details)


def find_names(
    text: str,
    low: str | None,
    cue_fired: bool,
    blocked: list[tuple[int, int]] | None = None,
    lexicon: bool | None = None,
) -> list[Span]:
    """PERSON spans; spans that need other personal data nearby (a name line at the top of
    a contact block) are returned with label ``PERSON?`` for the caller to confirm.
    ``blocked``: spans already found by other detectors; a name never runs across them.

    ``cue_fired``: the engine saw a context-phrase trigger (else no context rule can apply).
    Rules that need no context phrase only apply when the lexicon gate passes, so the result
    does not depend on the engine. ``lexicon``: ``gate(text)`` if the caller has it."""
    if lexicon is None:
        lexicon = gate(text)
    if not cue_fired and not lexicon:
        return []
    lowered = low if low is not None and len(low) == len(text) else text.lower()
    mask: bytearray | None = None
    if blocked:
        mask = bytearray(len(text))  # 1 where another detector's span lies
        for bs, be in blocked:
            mask[bs:be] = b"\x01" * (be - bs)
    chunks: list[_Chunk] = []
    for m in _CHUNK.finditer(text):
        s = m.start()
        # Inside an identifier, e-mail, path or URL, unless that is another detected span
        # (it becomes a placeholder: "x@y.comMaria Gonzalez" -> "[EMAIL] Gonzalez").
        if (
            s
            and (text[s - 1].isalnum() or text[s - 1] in "_@.#/-")
            and not (mask is not None and mask[s - 1])
        ):
            continue
        word = m.group()
        if " " not in word:  # fast path: most chunks are one word, most of those common
            kind = _kind(word)
            if kind in "CIP":
                continue
            e = s + len(word)
            if mask is None or mask.find(1, s, e) < 0:
                chunks.append(_Chunk(s, e, [kind], [word]))
            continue
        chunks.extend(_split(s, word, mask))
    for c in chunks:
        c.status = _judge(text, lowered, c, lexicon)
    _organisations(text, chunks)
    _propagate(text, chunks)
    out: list[Span] = [(c.start, c.end, PERSON) for c in chunks if c.status == "yes"]
    out += [(c.start, c.end, PERSON + "?") for c in chunks if c.status == "line"]
    if cue_fired and text.islower():  # an all-lower-case text
        for m in _LOWER_NAME_AFTER.finditer(lowered):
            words = m.group(1).split(" ")
            keep = [w for w in words if w in _NAMES and w not in COMMON_WORDS]
            if keep and words[0] in keep:
                end = m.start(1) + len(words[0])
                if len(words) > 1 and words[1] in keep:
                    end = m.end(1)
                out.append((m.start(1), end, PERSON))
    return out


def _split(start: int, chunk: str, mask: bytearray | None = None) -> list[_Chunk]:
    """Tokens of a capitalised run, cut at common words; leading/trailing initials and
    particles dropped (an initial right before a name stays: "J. Smith")."""
    toks = [(start + t.start(), t.group()) for t in _TOKEN.finditer(chunk)]
    kinds = [_kind(t) for _, t in toks]
    if mask is not None:
        for i, (ts, t) in enumerate(toks):
            if mask.find(1, ts, ts + len(t)) >= 0:
                kinds[i] = "C"  # part of another span (address, e-mail...): a separator
    out: list[_Chunk] = []
    run: list[int] = []
    for idx, k in enumerate([*kinds, "C"]):
        if k != "C":
            run.append(idx)
            continue
        i, j = 0, len(run)
        while i < j and kinds[run[i]] in "PI":
            i += 1
        while j > i and kinds[run[j - 1]] in "PI":
            j -= 1
        if i > 0 and kinds[run[i - 1]] == "I":
            i -= 1
        if i < j:
            sel = run[i:j]
            s = toks[sel[0]][0]
            e = toks[sel[-1]][0] + len(toks[sel[-1]][1])
            out.append(_Chunk(s, e, [kinds[x] for x in sel], [toks[x][1] for x in sel]))
        run = []
    return out


# Head nouns of things named after people: "Eiffel Tower", "Nobel Prize", "Bayes Theorem".
_EPONYM_HEADS = frozenset(
    """tower bridge street avenue road park square building hall center centre museum gallery
    library hospital university college school institute station airport stadium arena
    theater theatre palace castle cathedral church chapel temple mosque river lake mountain
    island bay beach valley canyon falls fair award awards prize medal act law theorem lemma
    equation effect principle syndrome disease test cup trophy festival foundation fund
    memorial monument""".split()
)
_NEXT_WORD = re.compile(r"[ ]+([^\W\d_]+)")


def _judge(text: str, lowered: str, c: _Chunk, lexicon: bool) -> str:
    core = [k for k in c.kinds if k not in "IP"]
    if not core or len(core) > 4:
        return ""
    if c.words[-1].lower() in _EPONYM_HEADS:
        return ""
    nxt = _NEXT_WORD.match(text, c.end)
    if nxt and nxt.group(1)[:1].isupper() and nxt.group(1).lower() in _EPONYM_HEADS:
        return ""
    strong, titled = _context_before(lowered[max(0, c.start - 48) : c.start])
    known = sum(k in "FS" for k in core)
    ambiguous = core.count("A")
    unknown = core.count("U") + core.count("M")
    if (strong or titled) and (known or unknown or (ambiguous and titled)):
        return "yes"
    if ambiguous and strong:
        return "maybe"
    if not lexicon:
        return "maybe" if not ambiguous or len(core) > 1 else ""
    if known:
        return "yes"
    if len(core) >= 2 and unknown and ("M" in core or core[0] == "A" and ambiguous == 1):
        return "yes"  # "Rose Ahtisaari", "Bekbolat Musliyevich"; not "First World War"
    line_start = bool(_LINE_PREFIX.search(text, max(0, c.start - 8), c.start))
    if line_start and _SPEAKER_AFTER.match(text, c.end):
        return "yes"
    possessive = text.startswith(("'s", "’s"), c.end)
    if (
        unknown
        and not ambiguous
        and (len(core) >= 2 or possessive)
        and _mid_sentence(text, c.start)
    ):
        return "yes"
    if len(core) >= 2 and line_start and _LINE_SUFFIX.match(text, c.end):
        return "line"
    return "maybe" if not ambiguous or len(core) > 1 or strong else ""


def _context_before(before: str) -> tuple[bool, bool]:
    """(a context phrase, a title) ends ``before``: ``_STRONG_BEFORE`` and
    ``_HONORIFIC_BEFORE`` searched only when its last characters allow them (a search tries
    the phrase alternation at every offset of the window). Their "$" also matches before a
    final newline; a title is followed by a space or tab, a phrase ends with a letter, ":" or
    "?" and is followed by "[ \t]*[:,]?[ \t]*"."""
    tail = before[:-1] if before.endswith("\n") else before
    end = tail.rstrip(" \t")
    if end.endswith(","):
        end = end[:-1].rstrip(" \t")
    last = end[-1:]
    strong = (last.isalpha() or last in (":", "?")) and bool(_STRONG_BEFORE.search(before))
    titled = tail.endswith((" ", "\t")) and bool(_HONORIFIC_BEFORE.search(before))
    return strong, titled


def _mid_sentence(text: str, s: int) -> bool:
    k = s - 1
    while k >= 0 and text[k] in " \t":
        k -= 1
    return k >= 0 and text[k] not in '.!?:\n>"“(' and k < s - 1


_ORG_AFTER = re.compile(
    r"[ ]*(?:,[ ]*)?(?:(?:&|and)[ ]+)?(?:Inc|LLC|L\.L\.C|Ltd|Limited|Corp|Corporation|Co|GmbH|AG|"
    r"PLC|plc|S\.?A|SE|NV|BV|Sons|Brothers|Bros|Group|Holdings|Partners|Associates|Orchestra|Band|"
    r"Bank|Software|Technologies|Technology|Tech|Labs|Systems|Solutions|Services|Investments|"
    r"Capital|Markets|Research|Insurance|Agency|Foundation|Institute|University|College|School|"
    r"Hospital|Company|Industries|Enterprises|International|Global|Media|Studios|Records|"
    r"Consulting|Analytics|Networks|Pharmaceuticals|Motors|Airlines|Press|Publishing)\b"
)


def _organisations(text: str, chunks: list[_Chunk]) -> None:
    """Company names built from surnames: "Smith Ltd.", "Thomas and Sons", "Hawkins,
    Richardson and Santana" (three or more bare surnames in a row, no first name)."""
    groups: list[list[_Chunk]] = []
    for c in chunks:
        if groups and _COORD.match(text[groups[-1][-1].end : c.start]):
            groups[-1].append(c)
        else:
            groups.append([c])
    for group in groups:
        org = any(_ORG_AFTER.match(text, c.end) for c in group)
        bare = all(len(c.kinds) == 1 and c.kinds[0] in "SAUM" for c in group)
        if org or (len(group) >= 3 and bare):
            for c in group:
                c.status = "org"


def _propagate(text: str, chunks: list[_Chunk]) -> None:
    """A 'maybe' chunk becomes a name when one of its words is a name elsewhere in the text
    ("Joakim Westgård ... starring Westgård") or when it is coordinated with a name
    ("Usamov and Bowers", "Gaetane, Hannah, Anthony")."""
    for _ in range(2):
        names = {w for c in chunks if c.status == "yes" for w in c.words if len(w) > 2}
        changed = False
        for i, c in enumerate(chunks):
            if c.status not in ("maybe", "line"):
                continue
            ok = any(w in names for w in c.words)
            for j in (i - 1, i + 1):
                if 0 <= j < len(chunks) and chunks[j].status == "yes":
                    a, b = (chunks[j], c) if j < i else (c, chunks[j])
                    if _COORD.match(text[a.end : b.start]):
                        ok = True
            if ok:
                c.status = "yes"
                changed = True
        if not changed:
            break
