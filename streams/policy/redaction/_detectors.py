"""R11 pattern detectors: e-mail, phone, payment card, IBAN, IP, national ids, credentials.

Each detector pairs engine-neutral *triggers* (run by the multi-pattern engine over the whole
text, see ``_engine``) with a ``find`` function that extracts and validates spans with Python
``re`` only when one of its triggers fired. A full pass of Python ``re`` over 1 KB costs
~10 µs and a case-insensitive alternation ~150 µs, so the finders anchor on literals, scan
the lower-cased text with case-sensitive patterns, and check context in small windows.
"""

from __future__ import annotations

import re

from ._lexicon import COMMON_WORDS, FIRST_NAMES, SURNAMES
from ._types import (
    CREDENTIAL,
    CREDIT_CARD,
    EMAIL,
    IBAN,
    IP_ADDRESS,
    NATIONAL_ID,
    PHONE,
    SPACE,
    Detector,
    Span,
    Trigger,
    scan,
)
from ._validators import (
    IBAN_LENGTHS,
    card_ok,
    iban_ok,
    ipv4_ok,
    ipv6_ok,
    luhn_ok,
    nino_ok,
    ssn_ok,
)

_A = re.ASCII
_WORDCH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


def _word_before(text: str, i: int) -> bool:
    return i > 0 and (text[i - 1] in _WORDCH or text[i - 1].isalnum())


def _word_at(text: str, i: int) -> bool:
    return i < len(text) and (text[i] in _WORDCH or text[i].isalnum())


def _literal_positions(text: str, literal: str) -> list[int]:
    out = []
    i = text.find(literal)
    while i >= 0:
        out.append(i)
        i = text.find(literal, i + 1)
    return out


# ---------------------------------------------------------------- e-mail
_LOCAL = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._%+-")
_DOMAIN = re.compile(r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}", _A)


def find_email(text: str, low: str | None) -> list[Span]:
    out: list[Span] = []
    for at in _literal_positions(text, "@"):
        start = at
        while start > 0 and at - start < 64 and text[start - 1] in _LOCAL:
            start -= 1
        while start < at and text[start] == ".":
            start += 1
        if start == at:
            continue
        m = _DOMAIN.match(text, at + 1)
        if m is None:
            continue
        end = m.end()
        if end < len(text) and (text[end].isalpha() or text[end] in "-_"):
            continue  # (a digit cannot extend a top-level domain: "x@y.com123" is glued text)
        out.append((start, end, EMAIL))
    return out


# ---------------------------------------------------------------- credentials
_USERINFO = re.compile(r"([^\s/?#@:]*:[^\s/?#]*)@")
_PRIVATE_KEY = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----"
    r".*?(?:-----END [A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\Z)",
    re.S,
)
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*", _A)
_KNOWN_TOKEN_CORE = (
    r"(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AIPA|ANPA|ANVA|AROA|APKA)[A-Z0-9]{16}"
    r"|gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255}"
    r"|glpat-[A-Za-z0-9_-]{20,}|xox[abposr]-[A-Za-z0-9-]{10,}"
    r"|hooks\.slack\.com/services/[A-Za-z0-9/_-]{20,}"
    r"|[spr]k_(?:live|test)_[A-Za-z0-9]{10,}|whsec_[A-Za-z0-9]{20,}"
    r"|sk-(?:proj-|ant-|svcacct-|admin-)?[A-Za-z0-9_-]{20,}"
    r"|AIza[0-9A-Za-z_-]{35}|ya29\.[0-9A-Za-z_-]{20,}|GOCSPX-[A-Za-z0-9_-]{20,}"
    r"|hf_[A-Za-z0-9]{30,}|npm_[A-Za-z0-9]{36}|pypi-[A-Za-z0-9_-]{50,}"
    r"|SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}|key-[0-9a-zA-Z]{32}"
    r"|dop_v1_[a-f0-9]{64}|shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32}|sq0(?:atp|csp)-[0-9A-Za-z_-]{22,}"
)
_KNOWN_TOKEN = re.compile(_KNOWN_TOKEN_CORE, _A)
_TOKENCH = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
_BEARER_LOW = re.compile(r"(?:bearer|basic|token|digest)\s+")
_BEARER_VALUE = re.compile(r"[A-Za-z0-9._~+/-]{16,}=*(?![A-Za-z0-9._~+/=-])", _A)
_SECRET_KEY_WORDS = (
    r"password|passwd|pwd|passphrase|secret|api[_-]?key|apikey|access[_-]?key|token"
    r"|private[_-]?key|credentials?|accountkey|sharedaccesskey|auth"
)
_KV_LOW = re.compile(
    r"(?:" + _SECRET_KEY_WORDS + r")[\"']?[ \t]*(:=|=>|=|:)[ \t]*([\"']?)([^\s\"'`,;<>]{3,200})"
)
_SAYS_LOW = re.compile(
    r"(?:password|passcode|passphrase|pin code|pin|pwd)\s+(?:is|was)\s*:?\s*[\"']?([^\s\"']{3,200})"
)
_TRAIL = ".,;:!?)]}"
NAMES = FIRST_NAMES | SURNAMES
_CODE_REF = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+$|.*[(\[]|[$%{<*]")
_NOT_SECRET = frozenset(
    "none null nil true false undefined required optional str string int bool bytes any "
    "redacted hidden masked xxx xxxx xxxxx env".split()
)


def _secret_value(value: str, prose: bool) -> str | None:
    value = value.rstrip(_TRAIL)
    if len(value) < 3 or value.startswith("[") or _CODE_REF.match(value):
        return None
    low = value.lower()
    if low in _NOT_SECRET:
        return None
    if prose and value.isalpha() and (low in COMMON_WORDS or low in NAMES):
        return None  # "password: click the link": a word of the sentence, not a password
    return value


def _lowered(text: str, low: str | None) -> str:
    # Case-insensitive search without (?i): callers only use offsets when lengths agree.
    return low if low is not None else text.lower()


def find_private_keys(text: str, low: str | None) -> list[Span]:
    out: list[Span] = []
    for i in _literal_positions(text, "-----BEGIN"):
        m = _PRIVATE_KEY.match(text, i)
        if m:
            out.append((m.start(), m.end(), CREDENTIAL))
    return out


def find_url_userinfo(text: str, low: str | None) -> list[Span]:
    out: list[Span] = []
    for i in _literal_positions(text, "://"):
        m = _USERINFO.match(text, i + 3)
        if m and m.group(1) != ":":
            out.append((m.start(1), m.end(1), CREDENTIAL))
    return out


def find_jwt(text: str, low: str | None) -> list[Span]:
    out: list[Span] = []
    for i in _literal_positions(text, "eyJ"):
        if i > 0 and text[i - 1] in _TOKENCH:
            continue
        m = _JWT.match(text, i)
        if m:
            out.append((m.start(), m.end(), CREDENTIAL))
    return out


def find_known_tokens(text: str, low: str | None) -> list[Span]:
    out: list[Span] = []
    for m in _KNOWN_TOKEN.finditer(text):
        if m.start() > 0 and text[m.start() - 1] in _TOKENCH:
            continue
        out.append((m.start(), m.end(), CREDENTIAL))
    return out


def find_bearer(text: str, low: str | None) -> list[Span]:
    lowered = _lowered(text, low)
    if len(lowered) != len(text):
        lowered = text  # offsets would drift; lower-case keywords only (fail-safe enough)
    out: list[Span] = []
    for m in _BEARER_LOW.finditer(lowered):
        if _word_before(lowered, m.start()):
            continue
        v = _BEARER_VALUE.match(text, m.end())
        if v:
            out.append((v.start(), v.end(), CREDENTIAL))
    return out


def find_kv_secrets(text: str, low: str | None) -> list[Span]:
    lowered = _lowered(text, low)
    if len(lowered) != len(text):
        lowered = text
    out: list[Span] = []
    for m in _KV_LOW.finditer(lowered):
        prose = m.group(1) == ":" and not m.group(2)
        raw = text[m.start(3) : m.end(3)]
        value = _secret_value(raw, prose)
        if value is not None:
            out.append((m.start(3), m.start(3) + len(value), CREDENTIAL))
    for m in _SAYS_LOW.finditer(lowered):
        if _word_before(lowered, m.start()):
            continue
        raw = text[m.start(1) : m.end(1)]
        value = _secret_value(raw, True)
        if value is not None:
            out.append((m.start(1), m.start(1) + len(value), CREDENTIAL))
    return out


# ---------------------------------------------------------------- payment cards
_CARD = re.compile(r"[0-9](?:[ -]?[0-9]){11,18}")
_CARD_BEFORE = frozenset("+./-")


def _card_groups_ok(raw: str) -> bool:
    seps = {c for c in raw if not c.isdigit()}
    if not seps:
        return True
    if len(seps) > 1:
        return False
    sizes = [len(g) for g in raw.split(seps.pop())]
    if 0 in sizes:
        return False
    if sizes in ([4, 6, 5], [4, 6, 4]):
        return True
    return all(s == 4 for s in sizes[:-1]) and 1 <= sizes[-1] <= 4


_CARD_CUE = re.compile(
    r"\b(?:card|cc|visa|mastercard|master card|amex|american express|maestro|discover|jcb"
    r"|diners|unionpay|credit|debit|pan)\b[^\n0-9]{0,24}$"
)


def _group_ends(text: str, s: int, e: int) -> list[int]:
    """``e`` and every earlier end of a digit group in text[s:e], longest first: a greedy
    number pattern may have swallowed a following number ("card 4111 ... 1111 2024")."""
    ends = [e]
    for i in range(e - 1, s, -1):
        if text[i] in " -.()" and text[i - 1].isdigit():
            ends.append(i)
    return ends


def _next_group(text: str, s: int) -> int:
    """Start of the digit group after the one at ``s`` (to retry after a rejected match
    without skipping the digits it swallowed)."""
    i = s
    while i < len(text) and text[i].isdigit():
        i += 1
    while i < len(text) and not text[i].isdigit():
        i += 1
    return max(i, s + 1)


def find_cards(text: str, low: str | None) -> list[Span]:
    out: list[Span] = []
    lowered = _lowered(text, low)
    pos = 0
    while True:
        m = _CARD.search(text, pos)
        if m is None:
            return out
        s = m.start()
        pos = _next_group(text, s)
        if _word_before(text, s) or (s > 0 and text[s - 1] in _CARD_BEFORE):
            continue
        for e in _group_ends(text, s, m.end()):
            if _word_at(text, e) or (e < len(text) and text[e] in "/-"):
                continue
            if e + 1 < len(text) and text[e] == "." and text[e + 1].isdigit():
                continue
            raw = text[s:e]
            digits = raw.replace(" ", "").replace("-", "")
            if len(digits) < 12 or not _card_groups_ok(raw):
                continue
            # Issuer prefix and length, or any Luhn-valid 12-19 digits right after a card word.
            if card_ok(digits) or (
                luhn_ok(digits)
                and len(lowered) == len(text)
                and _CARD_CUE.search(lowered, max(0, s - 40), s)
            ):
                out.append((s, e, CREDIT_CARD))
                pos = e
                break


# ---------------------------------------------------------------- IBAN
_IBAN = re.compile(r"[A-Za-z]{2}[0-9]{2}(?:[ -]?[A-Za-z0-9]){11,30}", _A)
_SEP = re.compile(r"[ -]")


def _iban(text: str, m: re.Match[str]) -> Span | None:
    if _word_before(text, m.start()):
        return None
    raw = m.group()
    length = IBAN_LENGTHS.get(raw[:2].upper())
    if length is None:
        return None
    taken = 0
    end = m.start()
    for i, ch in enumerate(raw):
        if ch.isalnum():
            taken += 1
            if taken == length:
                end = m.start() + i + 1
                break
    if taken != length or _word_at(text, end):
        return None
    compact = _SEP.sub("", text[m.start() : end])
    if not (compact.isupper() or compact.islower() or compact[2:].isdigit()):
        return None  # mixed case: an identifier, not an IBAN
    return (m.start(), end, IBAN) if iban_ok(compact) else None


def find_iban(text: str, low: str | None) -> list[Span]:
    return scan(_IBAN, text, lambda m: _iban(text, m))


# ---------------------------------------------------------------- IP addresses
_IPV4 = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,3}){3}")
_IPV6 = re.compile(
    r"(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:[0-9]{1,3}\.){3}[0-9]{1,3}|[0-9A-Fa-f]{1,4})?", _A
)


def _ipv4(text: str, m: re.Match[str]) -> Span | None:
    s, e = m.span()
    if _word_before(text, s) or (s > 0 and text[s - 1] == "."):
        return None
    if _word_at(text, e) or (e + 1 < len(text) and text[e] == "." and text[e + 1].isdigit()):
        return None
    return (s, e, IP_ADDRESS) if ipv4_ok(m.group()) else None


def _ipv6(text: str, m: re.Match[str]) -> Span | None:
    s, e = m.span()
    if s > 0 and (_word_before(text, s) or text[s - 1] in ":."):
        return None
    if _word_at(text, e) or (e < len(text) and text[e] == ":"):
        return None
    return (s, e, IP_ADDRESS) if ipv6_ok(m.group()) else None


def find_ipv4(text: str, low: str | None) -> list[Span]:
    return scan(_IPV4, text, lambda m: _ipv4(text, m))


def find_ipv6(text: str, low: str | None) -> list[Span]:
    return scan(_IPV6, text, lambda m: _ipv6(text, m))


# ---------------------------------------------------------------- national identifiers
_SSN = re.compile(r"([0-9]{3})-([0-9]{2})-([0-9]{4})")
_ID_CUES_LOW = re.compile(
    r"social[ -]security(?:[ -]number)?|driver['’]?s?[ -]licen[cs]e|driving[ -]licen[cs]e"
    r"|licen[cs]e[ -](?:number|no\.?|#)|passport|national[ -]id(?:entity)?(?:[ -]card)?"
    r"|identity[ -](?:card|number|document)|id[ -](?:number|no\.?|card|#)|tax[ -]id"
    r"|national[ -]insurance(?:[ -]number)?|nhs[ -]number|personnummer|codice[ -]fiscale"
    r"|aadhaar|pesel"
)
_ID_CUES_UPPER = re.compile(r"\b(?:SSN|SIN|TIN|NIN|BSN|DNI|NIE|NIF|CPF|ITIN|EIN|NINO)\b")
_ID_VALUE = re.compile(
    r"(?:\s*(?:number|no\.?|num|#))?(?:\s*(?:is|was|reads|[:=#-]))*\s*"
    r"((?:[A-Za-z]{1,3}[- ]?)?[0-9](?:[0-9]|[ -](?=[0-9])){3,19}(?:[A-Za-z](?![A-Za-z]))?)"
    r"(?![\w-])",
    re.I,
)
_NINO = re.compile(r"[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]", _A)


def _ssn(text: str, m: re.Match[str]) -> Span | None:
    s, e = m.span()
    if (s > 0 and (text[s - 1].isdigit() or text[s - 1] == "-")) or (
        e < len(text) and (text[e].isdigit() or text[e] == "-")
    ):
        return None
    return (s, e, NATIONAL_ID) if ssn_ok(m.group(1), m.group(2), m.group(3)) else None


def find_ssn(text: str, low: str | None) -> list[Span]:
    return scan(_SSN, text, lambda m: _ssn(text, m))


def find_id_context(text: str, low: str | None) -> list[Span]:
    lowered = _lowered(text, low)
    if len(lowered) != len(text):
        lowered = text
    out: list[Span] = []
    cues = [m.end() for m in _ID_CUES_LOW.finditer(lowered) if not _word_before(lowered, m.start())]
    cues += [m.end() for m in _ID_CUES_UPPER.finditer(text)]
    for end in cues:
        v = _ID_VALUE.match(text, end)
        if v:
            value = v.group(1)
            if sum(c.isdigit() for c in value) >= 4 and len(value) >= 5:
                out.append((v.start(1), v.end(1), NATIONAL_ID))
    return out


def find_nino(text: str, low: str | None) -> list[Span]:
    def check(m: re.Match[str]) -> Span | None:
        if _word_before(text, m.start()) or _word_at(text, m.end()) or not nino_ok(m.group()):
            return None
        return (m.start(), m.end(), NATIONAL_ID)

    return scan(_NINO, text, check)


# ---------------------------------------------------------------- phone numbers
WEAK_PHONE = PHONE + "?"  # found by context only: loses against a street address
_EXT = r"(?:[ ]?(?:x|ext\.?|extension)[ ]?[0-9]{1,6})?"
_PHONE_INTL = re.compile(r"(?:\+[ ]?|00(?=[1-9]))[0-9][0-9 ().-]{5,22}[0-9]" + _EXT)
# Separators as people type them: "301 944-5032", "301.944.5032", "(201/324/1423)".
_PHONE_NANP = re.compile(
    r"(?:1[ .-]?)?(?:\([0-9]{3}\)[ ]?|[0-9]{3}[ ./-])[0-9]{3}[ ./-][0-9]{4}" + _EXT
)
# A local number without area code, "555-0143", "call back at 944-5032": dash only (a dot or
# space between 3 and 4 digits is too often a version, an amount or a count).
_PHONE_LOCAL = re.compile(r"[2-9][0-9]{2}-[0-9]{4}" + _EXT)
_PHONE_CUES = (
    r"phone|tel|telephone|mobile|cell|cellphone|fax|call|calls|calling|text|sms|whatsapp|"
    r"dial|contact|messages?|answering|reach|desk|office|landline|hotline|number|"
    r"ph|pgr|pager|beeper|cb|callback|mob"
)
# Short pager and extension numbers after their word: "Pager #54321", "pgr 4417",
# "beeper 3-4417", "Extension 4521", "ext. 204".
_SHORT_CUES = r"pager|beeper|pgr|bleep|ext|extension|extn"
_PHONE_WORD = re.compile(r"\b(?:" + _PHONE_CUES + r")\b")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_PHONE_SHORT = re.compile(
    r"\b(?:" + _SHORT_CUES + r")\b\.?[ \t]*(?:#|no\.?|number|:)?[ \t]*#?[ \t]*"
    r"([0-9](?:-?[0-9]){2,5})(?![0-9]|[.,][0-9])"
)
_NUMBER = re.compile(r"[0-9][0-9 ().-]{4,22}[0-9]" + _EXT)
_CUE_BEFORE = re.compile(
    r"\b(?:" + _PHONE_CUES + r")\b(?:\.?[^\n0-9+(.!?;]{0,30}|[ \t]*:[ \t]*\n[ \t]*)$"
)
_LABEL_AFTER = re.compile(r"[ ]?[-–(]?[ ]?(?:office|fax|mobile|cell|home|work|direct)\b")
_DATE_LIKE = re.compile(r"\d{1,4}[./-]\d{1,2}[./-]\d{1,4}$")
_EXT_SPLIT = re.compile(r"[ ]?(?:x|ext\.?|extension)[ ]?(?=\d)")
_BAD_SEPS = re.compile(r"[ .-]{2}|[.-][ ]|[ ][.-]")


def _phone_ok(raw: str, min_digits: int) -> bool:
    core = _EXT_SPLIT.split(raw, maxsplit=1)[0]
    digits = sum(c.isdigit() for c in core)
    if digits < min_digits or digits > 15:
        return False
    if core.count("(") != core.count(")") or _BAD_SEPS.search(core):
        return False
    return not _DATE_LIKE.match(core)


def _trim_number(text: str, s: int, e: int) -> tuple[int, int]:
    # A trailing ")" or "." belongs to the sentence unless it closes a "(".
    while e > s and text[e - 1] in ".-( " or (text[e - 1] == ")" and "(" not in text[s:e]):
        e -= 1
    return s, e


def find_phone_intl(text: str, low: str | None) -> list[Span]:
    out: list[Span] = []
    pos = 0
    while True:
        m = _PHONE_INTL.search(text, pos)
        if m is None:
            return out
        s, end = _trim_number(text, *m.span())
        pos = s + 1
        if _word_before(text, s) or (s > 0 and text[s - 1] == "+"):
            continue
        for e in _group_ends(text, s, end):
            _, e = _trim_number(text, s, e)
            if not _word_at(text, e) and _phone_ok(text[s:e], 8):
                out.append((s, e, PHONE))
                pos = e
                break


def _glued_ok(text: str, s: int) -> bool:
    """A formatted number may be glued to a word or a dash ("KRISSY---301 944-5032",
    "LORI-978-555-0102"), not to another number ("12-301-944-5032", "+44...", "3.301")."""
    if s == 0:
        return True
    before = text[s - 1]
    if before.isdigit() or before in "+._/":
        return False
    if before == "-":
        k = s - 1
        while k > 0 and text[k - 1] == "-":
            k -= 1
        return k == 0 or not text[k - 1].isdigit()
    return True


def find_phone_nanp(text: str, low: str | None) -> list[Span]:
    def check(m: re.Match[str]) -> Span | None:
        s, e = m.span()
        if not _glued_ok(text, s):
            return None
        if _word_at(text, e) or (e + 1 < len(text) and text[e] in "./-" and text[e + 1].isdigit()):
            return None
        return (s, e, PHONE) if _phone_ok(m.group(), 10) else None

    return scan(_PHONE_NANP, text, check)


def find_phone_local(text: str, low: str | None) -> list[Span]:
    def check(m: re.Match[str]) -> Span | None:
        s, e = m.span()
        if not _glued_ok(text, s) or (s and text[s - 1] in "-("):
            return None
        if _word_at(text, e) or (e + 1 < len(text) and text[e] in "./-" and text[e + 1].isdigit()):
            return None
        return (s, e, PHONE)

    return scan(_PHONE_LOCAL, text, check)


def find_phone_short(text: str, low: str | None) -> list[Span]:
    # ASCII letters lowered only: same offsets, and no "K" (Kelvin) read as "k".
    lowered = text.translate(_ASCII_LOWER)
    out: list[Span] = []
    for m in _PHONE_SHORT.finditer(lowered):
        if lowered.startswith("ext", m.start()) and not _extension_context(lowered, m.start()):
            continue  # "Tokoza Ext 1426" is a township, not an extension
        out.append((m.start(1), m.end(1), PHONE))
    return out


def _extension_context(lowered: str, s: int) -> bool:
    """An "ext" number is a phone extension at the start of a sentence or line, or after a
    phone word or a number nearby ("call 555-0100 ext 12", "x204 or ext 205")."""
    before = lowered[max(0, s - 40) : s]
    stripped = before.rstrip(" \t")
    if not stripped or stripped[-1] in ".!?:;\n(,":
        return True
    return any(c.isdigit() for c in before) or bool(_PHONE_WORD.search(before))


def find_phone_context(text: str, low: str | None) -> list[Span]:
    lowered = _lowered(text, low)
    if len(lowered) != len(text):
        lowered = text

    def check(m: re.Match[str]) -> Span | None:
        s, end = _trim_number(text, *m.span())
        if _word_before(text, s):
            return None
        if s > 0 and text[s - 1] in "+(":
            s -= 1
            if text[s] == "(" and ")" not in text[s:end]:
                s += 1
        for e in _group_ends(text, s, end):
            _, e = _trim_number(text, s, e)
            if _word_at(text, e) or not _phone_ok(text[s:e], 7):
                continue
            if _CUE_BEFORE.search(lowered, max(0, s - 48), s) or _LABEL_AFTER.match(lowered, e):
                return (s, e, WEAK_PHONE)
        return None

    # Retry only at digit-group starts: a plain retry at every digit would be quadratic in
    # the length of a digit run.
    out: list[Span] = []
    pos = 0
    while True:
        m = _NUMBER.search(text, pos)
        if m is None:
            return out
        span = check(m)
        if span is None:
            pos = _next_group(text, m.start())
        else:
            out.append(span)
            pos = span[1]


# ---------------------------------------------------------------- the detector table
_T = Trigger
_HEX = "[0-9A-Fa-f]"
# What _ID_VALUE lets stand between a cue and the number: any amount of (Unicode, so also
# newline) whitespace, "number"/"no."/"is"/"was"/"reads"/":=#-" and up to three letters.
# Letters that only match under re.I (the Kelvin sign for "k", ...) are non-ASCII: in SPACE.
_ID_GAP = r"(?:" + SPACE + r"|(?i:[#:=.\-bdeimnorsuwa]))*(?i:[a-z]{1,3}[- ]?)?[0-9]"
DETECTORS: tuple[Detector, ...] = (
    Detector("email", (_T(r"[A-Za-z0-9._%+-]@[A-Za-z0-9]"),), find_email),
    Detector("private_key", (_T(r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY"),), find_private_keys),
    Detector("url_userinfo", (_T(r"://[^\s/?#@:]*:[^\s/?#]*@"),), find_url_userinfo),
    Detector("jwt", (_T(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\."),), find_jwt),
    Detector("known_token", (_T(_KNOWN_TOKEN_CORE),), find_known_tokens),
    Detector(
        "bearer",
        (_T(r"(?:bearer|basic|token|digest)" + SPACE + r"+[A-Za-z0-9._~+/-]{16}", caseless=True),),
        find_bearer,
    ),
    Detector(
        "kv_secret",
        (
            _T(r"(?:" + _SECRET_KEY_WORDS + r")[\"']?[ \t]*[:=]", caseless=True),
            # _SAYS_LOW: "pin code is", "password is:hunter2" (no space needed after "is")
            _T(
                r"(?:password|passcode|passphrase|pin(?: code)?|pwd)" + SPACE + r"+(?:is|was)",
                caseless=True,
            ),
        ),
        find_kv_secrets,
    ),
    Detector("card", (_T(r"[0-9](?:[ -]?[0-9]){11,18}"),), find_cards),
    Detector("iban", (_T(r"[A-Za-z]{2}[0-9]{2}(?:[ -]?[A-Za-z0-9]){11}"),), find_iban),
    Detector("ipv4", (_T(r"[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}"),), find_ipv4),
    Detector(
        "ipv6",
        (
            _T(f"{_HEX}::{_HEX}|::{_HEX}{{1,4}}:{_HEX}|{_HEX}:{_HEX}{{0,4}}::"),
            _T(f"(?:{_HEX}{{1,4}}:){{7}}{_HEX}|(?:{_HEX}{{1,4}}:){{6}}[0-9]{{1,3}}\\."),
        ),
        find_ipv6,
    ),
    Detector("ssn", (_T(r"[0-9]{3}-[0-9]{2}-[0-9]{4}"),), find_ssn),
    Detector(
        "id_context",
        (
            _T(
                r"(?:social[ -]security|licen[cs]e|passport|national[ -]id|identity[ -]"
                r"|id[ -](?:number|no|card|#)|tax[ -]id|national[ -]insurance|nhs[ -]number"
                r"|personnummer|codice[ -]fiscale|aadhaar|pesel)" + _ID_GAP,
                caseless=True,
            ),
            _T(r"(?:SSN|SIN|TIN|NIN|BSN|DNI|NIE|NIF|CPF|ITIN|EIN|NINO)" + _ID_GAP),
        ),
        find_id_context,
    ),
    Detector("nino", (_T(r"[A-Z]{2} ?[0-9]{2} ?[0-9]{2} ?[0-9]{2} ?[A-D]"),), find_nino),
    Detector(
        "phone_intl",
        (_T(r"\+ ?[0-9][0-9 ().-]{5,22}[0-9]"), _T(r"00[1-9][0-9 ().-]{4,22}[0-9]")),
        find_phone_intl,
    ),
    Detector("phone_nanp", (_T(r"[0-9]{3}\)? ?[ ./-]?[0-9]{3}[ ./-][0-9]{4}"),), find_phone_nanp),
    Detector("phone_local", (_T(r"[2-9][0-9]{2}-[0-9]{4}"),), find_phone_local),
    Detector(
        "phone_short",
        (
            _T(
                r"(?:" + _SHORT_CUES + r")[^A-Za-z0-9\n]*(?:(?:no|number)[^A-Za-z0-9\n]*)?[0-9]",
                caseless=True,
            ),
        ),  # fmt: skip
        find_phone_short,
    ),
    Detector(
        "phone_context",
        (
            # The finder wants the cue at most ~32 characters before the number; unbounded
            # here ("[^0-9]*", a digit ends it) because a DFA tracks a bounded window as the
            # set of offsets of every cue in it: with the other triggers, RE2::Set then built
            # new DFA states on most unseen texts. Fires slightly more often; same output.
            _T(
                r"(?:" + _PHONE_CUES + r")[^0-9]*[0-9](?:[ ().-]{0,2}[0-9]){6}",
                caseless=True,
            ),
            _T(
                r"[0-9](?:[ ().-]{0,2}[0-9]){6}[^A-Za-z0-9\n]{0,5}"
                r"(?:office|fax|mobile|cell|home|work|direct)",
                caseless=True,
            ),
        ),
        find_phone_context,
    ),
)
