"""R11 people's names written in lower case or ALL CAPS, and @handles.

``_names`` reads capitalisation ("Anna Lee") as the first evidence of a name; people writing
chats, notes and posts often drop it ("per dr. kenny", "the pt's son, bill, called", "PER
DOUGLASS WILL HOLD", "RT @anthonyuJR:"). Here the letter case of a word says nothing; the
evidence is, in order of strength:

* a title right before ("dr.", "mrs", "Dr.Sawtelle" glued): any word that is no stop word;
* a context phrase right before: a relation ("son", "wife", "daughter-"), a greeting or
  sign-off ("hi", "thanks", "regards,\\n"), an introduction ("this is", "i'm"), a clinical
  hand-over ("per", "spoke with", "paged", "notified", "d/w", "cc"): a lexicon name; a name
  that is also a word ("bill", "rose", "frank") only when punctuation closes it off
  ("son, bill, called") or a speech verb follows;
* a speech verb after ("said", "says", "texted", "called") or a possessive relation after
  ("noah's mom"): a lexicon name;
* a signature line: one to three words before a credential at the end of a line
  ("MURIELE WILLIAM RN", "c. evans, lpn");
* the word itself: a Census first name that is no English word ("krissy", "JESSICA",
  ``_anycase_data.DISTINCT_FIRST``) is more likely a name than not, so it is taken without
  context (fail closed for training candidates), with the lexicon names that follow it;
* @handles after "RT"/"cc" or before ":" (a retweet or mention header), or containing a
  lexicon first name ("@kaylaxoxo", "@tylerj"); decorators ("@dataclass" on its own line)
  and team mentions ("@here", "@channel") are left alone.

A word found once is a name everywhere in the text ("son kevin ... kevin called back").
Title-case words are left to ``_names`` (except glued after a title), so text written with
capitals gets the same answers as before. Clinical words that are also surnames ("foley",
"endo", "swan", "aline") are never names here; ``_names`` treats them as ambiguous.

The detector's triggers (``DETECTORS``) let the engine skip it: a cue followed by a letter, a
letter before a speech verb or a credential, an "@" starting a word, or a distinct first name
as a whole word in lower case or ALL CAPS. Only the groups whose trigger fired are searched.
"""

from __future__ import annotations

import re

from ._anycase_data import DISTINCT_FIRST as _DISTINCT
from ._anycase_data import WORDLIKE as _WORDLIKE
from ._lexicon import COMMON_WORDS, FIRST_NAMES, HONORIFICS, NOT_NAME, PLACES, SURNAMES
from ._types import PERSON, Detector, Span, Trigger

DISTINCT_FIRST: frozenset[str] = frozenset(_DISTINCT.split())
WORDLIKE: frozenset[str] = frozenset(_WORDLIKE.split())
_NAMES = FIRST_NAMES | SURNAMES

# Words of clinical notes, chats and brands that are surnames in the lexicon: never a name
# here, only with a title in ``_names`` ("Dr. Foley").
CLINICAL: frozenset[str] = frozenset(
    """foley endo swan ganz aline picc cath peg trach vent neuro ortho cardio cards onc renal
    pulm psych pharm rad surg gyn peds tele rehab detox labs abx vanc zosyn lasix coumadin
    heparin insulin tylenol morphine dilaudid ativan haldol oxy norco motrin zofran
    bipap cpap ngt ogt foleys ekg ecg echo mri cta dopp doppler stat prn bid tid qid
    oh ah eh uh um hmm wow yay ugh aww omg lol lmao rofl smh tbh imo idk ikr btw fyi asap
    toyota honda ford nissan lexus tesla subway target costco walmart kroger
    """.split()
)

# Words that are never a name after a cue: function words, pronouns, chat words, roles.
STOP: frozenset[str] = frozenset(
    """a an the and or but nor so if then than that this these those there here what who whom
    whose which when where why how all any some every each everyone everybody anyone anybody
    someone somebody no not yes yeah yep nope ok okay k i me my mine you your yours u ur ya
    yall y'all he him his she her hers it its we us our ours they them their theirs myself
    is are was were be been being am do does did done have has had will would shall should
    can could may might must to of in on at by for from with about as into onto over under
    up down out off again just also too very really still only even much more most many
    guys team folks fam bro bruh dude man girl girls boys babe baby hun honey sweetie darling
    love dear sir maam madam everyone pls plz please thx thanks thank ty tysm np yw
    pt pts patient patients family fam md rn np pa do lpn cna doc nurse staff attending
    resident intern fellow charge unit floor team pharmacy lab radiology admitting
    mom mum dad mother father son daughter wife husband brother sister aunt uncle cousin
    grandma grandpa nana papa friend friends boss
    today tonight tomorrow yesterday morning afternoon evening night week weekend now later
    soon again""".split()
)

_VOWEL = re.compile(r"[aeiouyà-ÿ]")
_INFLECTED = re.compile(r"(?:ed|ing|ly)$", re.I)


def kind(word: str) -> str:
    """Kind of a lower-cased word: 'X' never a name, 'I' initial, 'D' distinct first name,
    'F'/'S' lexicon first name / surname, 'A' lexicon name that is also a word, 'C' common
    word, 'U' unknown word."""
    w = word.replace("’", "'")
    if w.endswith("'s"):
        w = w[:-2]
    if w in STOP or w in CLINICAL or w in NOT_NAME or w in HONORIFICS:
        return "X"
    if len(w) == 1:
        return "I"
    if w in DISTINCT_FIRST:
        return "D"
    if w in _NAMES:
        if w in COMMON_WORDS or w in WORDLIKE or w in PLACES:
            return "A"
        return "F" if w in FIRST_NAMES else "S"
    if w in COMMON_WORDS or len(w) < 3 or not _VOWEL.search(w):
        return "C"
    return "U"


# ---------------------------------------------------------------- cues (lower case)
_TITLES = r"dr|doctor|mr|mrs|ms\.|mx|prof|professor|reverend|chaplain|pastor|rabbi"
_RELATIONS = (
    r"son|daughter|dtr|wife|husband|hubby|spouse|mom|mother|mum|dad|father|brother|bro|sister|"
    r"sis|niece|nephew|cousin|grandson|granddaughter|grandmother|grandfather|grandma|grandpa|"
    r"aunt|auntie|uncle|friend|bff|boyfriend|girlfriend|fianc[eé]e?|neighbou?r|"
    r"roommate|coworker|colleague|caregiver|guardian|poa|hcp|nok|case mgmt|case manager"
)
_GREETINGS = (
    r"hi|hey|hello|hiya|heya|dear|thanks|thank you|thx|tysm|cheers|regards|love|xoxo|"
    r"sincerely|congrats|congratulations|goodnight|good morning|"
    r"happy birthday|hbd|miss you|miss u"
)
_INTROS = r"i'm|i’m|my name is|call me|signed,"
_ACTIONS = (
    r"seen by|seen with|spoke with|spoke to|spoke w/?|spk w/?|talked to|talked with|"
    r"paged|notified|informed|discussed with|d/w|cc:|attn|c/o|"
    r"left vm for|vm for|vm to|message for|msg for|message from|msg from|text from|call from"
)
_SPEECH = r"said|says|saying|stated|texted|replied|asked|told|wants|wanted|agrees|agreed"
_POSSESSED = (
    r"mom|mum|dad|mother|father|wife|husband|son|daughter|sister|brother|number|phone|cell|"
    r"flight|car|house|place|birthday|party|wedding|baby|kids|room|office|email|address"
)
_CREDENTIALS = r"rn|md|lpn|lvn|pa-c|cna|rrt|msw|lcsw|bsn|phd|rph|pharmd|crna|aprn|fnp|dnp|mbbs"
# A cue group: (name, regex over the lower-cased text ending at the cue, strength).
_WB = r"(?<![^\W\d_])"  # a cue starts a word
_CUE_GROUPS: tuple[tuple[str, str, str], ...] = (
    ("title", _TITLES, "title"),
    ("relation", _RELATIONS, "strong"),
    ("greeting", _GREETINGS, "strong"),
    ("intro", _INTROS, "strong"),
    ("action", _ACTIONS, "action"),
)
# Between a cue and the name: spaces and a little punctuation ("son, bill", "dr.kenny",
# "DAUGHTER-KRISSY", "regards,\njohn"), at most one line break.
_SEP = re.compile(r"[ \t]*[.,:;()\-–—/#]{0,4}[ \t]*(?:\n[ \t]*)?")
_TOKEN = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?")
_NEXT = re.compile(r"(?:[ \t]+|[ \t]*\.[ \t]*)")  # between the words of one name
_CUE_RX = {name: re.compile(r"(?:" + rx + r")") for name, rx, _ in _CUE_GROUPS}
# Where cues may stand, found with RE2 (Python ``re`` tries a ~100-branch alternation at
# every offset, ~5x slower; RE2 with ``\b`` ~1.6x slower than with a leading character):
# a cue's start and end are checked again in Python (not after or before a letter).
_CUE_PATTERN = (
    r"(?:^|[^a-z])(?:"
    + "|".join(
        sorted({c for _, rx, _ in _CUE_GROUPS for c in rx.split("|")}, key=len, reverse=True)
    )
    + r")"
)
_CUE_SCAN_PY = re.compile(_CUE_PATTERN)
try:  # google-re2 is a dependency; the engine falls back to ``re`` without it, so may we
    import re2

    _CUE_SCAN = re2.compile(_CUE_PATTERN)
except ImportError:  # pragma: no cover
    _CUE_SCAN = _CUE_SCAN_PY
_STRENGTH = {name: strength for name, _, strength in _CUE_GROUPS}
_SPEECH_AFTER = re.compile(r"[ \t,]+(?:" + _SPEECH + r")(?![^\W\d_])")
# Searched from the verb (a leading character class is a fast scan); the word before is
# then read backwards in a small window.
_SPEECH_RX = re.compile(r"[ \t,]+(?:" + _SPEECH + r")(?![^\W\d_])")
_POSSESSIVE_RX = re.compile(r"['’]s[ \t]+(?:" + _POSSESSED + r")(?![^\W\d_])")
_WORD_BEFORE = re.compile(r"[^\W\d_]+(?:['’][^\W\d_]+)?$")
_SIGNATURE_RX = re.compile(
    r"(?m)^[ \t>*-]*((?:[^\W\d_]+\.?[ \t]+){0,2}[^\W\d_]+\.?)(?:[ \t]*,[ \t]*|[ \t]+)"
    r"(?:" + _CREDENTIALS + r")\.?[ \t]*$"
)
_HANDLE_RX = re.compile(r"@([A-Za-z0-9_]{2,30})")
_NOT_BEFORE_AT = frozenset(".@%+-_")
_DISTINCT_RX = re.compile(r"(?<![^\W\d_])([a-z]+|[A-Z]+)(?![^\W\d_])")
_BEFORE_HANDLE = re.compile(r"(?:^|[^\w])(?:rt|cc|via|congrats|thanks|thx|ty|hi|hey|omg)[ \t:]*$")
_DETERMINERS = frozenset(
    "the a an this that these those my your his her our their its of in on to for with by".split()
)
_TEAM_HANDLES = frozenset("here channel everyone all team admin admins devs mods".split())


def _ok_case(word: str) -> bool:
    """Lower case or ALL CAPS (Title case is ``_names``'s)."""
    return word.islower() or (word.isupper() and len(word) > 1)


def _bounded(text: str, end: int, sep: str) -> bool:
    """Punctuation closes the word off: "son, bill," / "DAUGHTER-KRISSY" / "thx frank" at the
    end / "SISTER ROSE (508) ..." / a speech verb after."""
    if any(c in sep for c in ",-–—:(;\n"):
        return True
    after = end
    while after < len(text) and text[after] in " \t":
        after += 1
    if after >= len(text) or text[after] in ",.!?:;()@\n" or text[after].isdigit():
        return True
    return bool(_SPEECH_AFTER.match(text, end))


def _extend(text: str, low: str, end: int, words: set[str]) -> int:
    """Lexicon names (and initials before one) that follow a name belong to it."""
    for _ in range(3):
        m = _NEXT.match(low, end)
        if m is None:
            break
        t = _TOKEN.match(low, m.end())
        if t is None or not _ok_case(text[t.start() : t.end()]):
            break
        k = kind(t.group())
        if k == "I":
            after = _NEXT.match(low, t.end())
            nxt = _TOKEN.match(low, after.end()) if after else None
            if nxt is None or kind(nxt.group()) not in "DFSU":
                break
            end = t.end() + (1 if t.end() < len(low) and low[t.end()] == "." else 0)
            continue
        if k not in "DFS":
            break
        words.add(t.group())
        end = t.end()
    return end


def _take(text: str, low: str, s: int, e: int, spans: list[Span], words: set[str],
          k: str) -> None:  # fmt: skip
    e = _extend(text, low, e, words)
    if text.startswith(("'s", "’s"), e - 2) and e - s > 2:
        e -= 2
    spans.append((s, e, PERSON))
    if k in "DFSU":
        w = low[s:e].split()[0].rstrip(".")
        w = w[:-2] if w.endswith(("'s", "’s")) else w
        if len(w) >= 3:
            words.add(w)


def _cue_matches(low: str) -> list[tuple[int, int]]:
    """Where cues stand; a match may start with the character before the cue."""
    try:
        spans = [m.span() for m in _CUE_SCAN.finditer(low)]
    except UnicodeEncodeError:  # lone surrogates: RE2 takes UTF-8 only
        spans = [m.span() for m in _CUE_SCAN_PY.finditer(low)]
    return [(s + 1 if s < e and not ("a" <= low[s] <= "z") else s, e) for s, e in spans]


def _after_cues(text: str, low: str, spans: list[Span], words: set[str]) -> None:
    for cs, ce in _cue_matches(low):
        if (cs and low[cs - 1].isalpha()) or (ce < len(low) and low[ce].isalpha()):
            continue  # inside a word: "drive" is no "dr"
        if not text[cs:ce].isascii():
            continue  # the engine's caseless trigger is ASCII ("K" lower-cases to "k")
        cue = low[cs:ce]
        group = next(g for g, rx in _CUE_RX.items() if rx.fullmatch(cue))
        _after_cue(text, low, group, ce, spans, words)


def _after_cue(
    text: str, low: str, group: str, cue_end: int, spans: list[Span], words: set[str]
) -> None:
    strength = _STRENGTH[group]
    sep = _SEP.match(low, cue_end)
    pos = sep.end() if sep else cue_end
    if pos == cue_end:
        return  # "drive" is no "dr" + "ive"
    gap = low[cue_end:pos]
    t = _TOKEN.match(low, pos)
    if t is None:
        return
    s, e = t.span()
    word = text[s:e]
    if e < len(low) and (low[e] in "_@=(" or low[e].isdigit()):
        return  # an identifier or a call, not a name
    k = kind(t.group())
    if k == "I" and strength in ("title", "strong"):
        if not (word.islower() or low.startswith(".", e)):
            return
        nxt = _NEXT.match(low, e + (1 if low.startswith(".", e) else 0))
        t2 = _TOKEN.match(low, nxt.end()) if nxt else None
        if t2 and kind(t2.group()) in "DFSU" and _ok_case(text[t2.start() : t2.end()]):
            _take(text, low, s, t2.end(), spans, words, kind(t2.group()))
        return
    glued = group == "title" and gap == "." and word[:1].isupper()
    if not (_ok_case(word) or glued):
        return
    if strength == "title":
        ok = k in "DFSAU"
    elif strength == "strong":
        # A name that is also a word but no common one ("frank", "rose", "jess") after a
        # relation or a greeting; a common one ("bill") or an unknown word only when
        # punctuation closes it off ("son, bill, called"; "mom texted," is no name).
        wordlike = k == "A" and t.group() not in COMMON_WORDS and group != "intro"
        unknown = k == "U" and group in ("greeting", "intro") and not _INFLECTED.search(word)
        ok = k in "DFS" or wordlike or ((k == "A" or unknown) and _bounded(low, e, gap))
    else:  # action
        ok = k in "DFS" or (k == "A" and _bounded(low, e, gap))
    if ok:
        _take(text, low, s, e, spans, words, k)


def _before_speech(text: str, low: str, spans: list[Span], words: set[str]) -> None:
    for rx in (_SPEECH_RX, _POSSESSIVE_RX):
        for m in rx.finditer(low):
            w = _WORD_BEFORE.search(low, max(0, m.start() - 40), m.start())
            if w is None:
                continue
            s, e = w.span()
            if s and (low[s - 1].isalnum() or low[s - 1] in "_@.#/'’"):
                continue
            word = text[s:e]
            if not _ok_case(word):
                continue
            k = kind(w.group())
            if k in "DFS":
                spans.append((s, e, PERSON))
                words.add(w.group())
            elif k == "A" and rx is _SPEECH_RX:
                prev = re.findall(r"[^\W\d_]+", low[max(0, s - 12) : s])
                if not prev or prev[-1] not in _DETERMINERS:
                    spans.append((s, e, PERSON))


def _signatures(text: str, low: str, spans: list[Span], words: set[str]) -> None:
    for m in _SIGNATURE_RX.finditer(low):
        s, e = m.span(1)
        toks = list(_TOKEN.finditer(low, s, e))
        kinds = [kind(t.group()) for t in toks]
        if not toks or any(k in "XC" for k in kinds) or kinds[-1] == "I":
            continue
        if all(k == "I" for k in kinds):
            continue
        spans.append((s, e, PERSON))
        words.update(t.group() for t, k in zip(toks, kinds, strict=True) if k in "DFSU")


def _handles(text: str, spans: list[Span]) -> None:
    at = text.find("@")
    while at >= 0:
        before = text[at - 1] if at else " "
        ok = before not in _NOT_BEFORE_AT and not before.isalnum()
        m = _HANDLE_RX.match(text, at) if ok else None
        at = text.find("@", at + 1)
        if m is None:
            continue
        handle = m.group(1)
        low = handle.lower()
        if low in _TEAM_HANDLES:
            continue
        s, e = m.span()
        line_start = text.rfind("\n", 0, s) + 1
        if not text[line_start:s].strip() and (e >= len(text) or text[e] in "(.\n"):
            continue  # a decorator on its own line
        header = bool(_BEFORE_HANDLE.search(text.lower(), max(0, s - 12), s)) or (
            e < len(text) and text[e] == ":"
        )
        if header or _handle_has_name(low):
            spans.append((s, e, PERSON))


def _handle_has_name(handle: str) -> bool:
    parts = [p for p in re.split(r"[_.0-9]+", handle) if p]
    for p in parts:
        if len(p) >= 3 and kind(p) in "DFS":
            return True
        for n in range(min(len(p), 10), 3, -1):  # a first name at either end: "kaylaxoxo"
            for w in (p[:n], p[-n:]):
                if w in DISTINCT_FIRST or (w in FIRST_NAMES and kind(w) == "F"):
                    return True
                if n >= 5 and w in FIRST_NAMES and w not in COMMON_WORDS and kind(w) == "A":
                    return True  # "@jennawalsh_": a name that is a rare word ("jenna")
        for n in range(min(len(p) - 2, 10), 3, -1):  # or inside: "realjohnsmith"
            for i in range(1, len(p) - n):
                if p[i : i + n] in DISTINCT_FIRST:
                    return True
    return False


def _distinct(text: str, low: str, spans: list[Span], words: set[str]) -> None:
    for m in _DISTINCT_RX.finditer(text):
        w = m.group(1).lower()
        if w not in DISTINCT_FIRST:
            continue
        s, e = m.span(1)
        if s and text[s - 1] in "@#./_\\$":
            continue
        if e < len(text) and (
            text[e] in "_(=/" or (text[e] == "." and text[e + 1 : e + 2].isalpha())
        ):
            continue  # an identifier, a call, a path or a file name
        _take(text, low, s, e, spans, words, "D")


def _propagate(text: str, low: str, words: set[str], spans: list[Span]) -> None:
    for w in words:
        for m in re.finditer(r"(?<![^\W\d_])" + re.escape(w) + r"(?![^\W\d_])", low):
            s, e = m.span()
            if s and low[s - 1] in "@#./_":
                continue
            spans.append((s, e, PERSON))


def _lowered(text: str, low: str | None) -> str:
    if low is not None and len(low) == len(text):
        return low
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


# Trigger index -> what to run.
_ALL = frozenset(range(7))


def find_fired(text: str, low: str | None, fired: frozenset[int]) -> list[Span]:
    low = _lowered(text, low)
    spans: list[Span] = []
    words: set[str] = set()
    if 0 in fired or 1 in fired:
        _distinct(text, low, spans, words)
    if 2 in fired:
        _after_cues(text, low, spans, words)
    if 3 in fired or 4 in fired:
        _before_speech(text, low, spans, words)
    if 5 in fired:
        _signatures(text, low, spans, words)
    if 6 in fired:
        _handles(text, spans)
    if words:
        _propagate(text, low, words, spans)
    return spans


def find(text: str, low: str | None) -> list[Span]:
    return find_fired(text, low, _ALL)


_LETTERISH = r"[^\x00-\x40\x5b-\x60\x7b-\x7f]"
_LOWER_OR_CAPS = r"(?:[a-z]|[A-Z][A-Z.]|[^\x00-\x7f])"  # how a word after a cue starts
_LOWER_OR_CAPS_END = r"(?:[a-z]|[A-Z][A-Z]|[^\x00-\x7f])"  # how a word before a verb ends
_NB = r"(?:^|[^A-Za-z])"  # not after a letter
_CUES_ALL = "|".join(rx for _, rx, _ in _CUE_GROUPS)
_ALT = "|".join(sorted(DISTINCT_FIRST))
TRIGGERS: tuple[Trigger, ...] = (
    Trigger(_NB + r"(?:" + _ALT + r")(?:[^A-Za-z]|$)"),
    Trigger(_NB + r"(?:" + _ALT.upper() + r")(?:[^A-Za-z]|$)"),
    # A cue, then a word in lower case or ALL CAPS (or an initial, or a non-ASCII letter),
    # or a capital glued to a title ("Dr.Sawtelle"); Title-case words after a cue are
    # ``_names``'s.
    Trigger(
        _NB
        + r"(?:(?i:"
        + _CUES_ALL
        + r")[^A-Za-z0-9]+"
        + _LOWER_OR_CAPS
        + r"|(?i:"
        + _TITLES
        + r")\.[A-Z])"
    ),
    # Anchored on the verb, the possessive or the credential, not on the word before it (a
    # pattern that may start at every letter multiplies the DFA states RE2::Set builds on
    # new text); the finders check that word.
    Trigger(r"[ \t,](?i:" + _SPEECH + r")(?:[^A-Za-z]|$)"),
    Trigger(r"['’]s[ \t]+(?i:" + _POSSESSED + r")(?:[^A-Za-z]|$)"),
    Trigger(r"[ \t,](?i:" + _CREDENTIALS + r")\.?[ \t]*(?:\n|$)"),
    Trigger(r"(?:^|[^A-Za-z0-9._%+-])@[A-Za-z0-9_]"),
)

DETECTORS: tuple[Detector, ...] = (
    Detector("names_any_case", TRIGGERS, find, find_fired=find_fired),
)
