"""R11 personal-information redaction: detectors, validators, placeholders, counts, metadata,
idempotence, engine exactness (property tests) and the accuracy targets on the labelled set."""

from __future__ import annotations

import importlib.util
import re
import string
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from streams.policy.redaction import (
    CREDENTIAL,
    CREDIT_CARD,
    EMAIL,
    IBAN,
    IP_ADDRESS,
    LABELS,
    NATIONAL_ID,
    PERSON,
    PHONE,
    STREET_ADDRESS,
    Redaction,
    Redactor,
    placeholder,
    redact,
)
from streams.policy.redaction._engine import ENGINES
from streams.policy.redaction._types import DIGIT
from streams.policy.redaction._validators import card_ok, iban_ok, ipv4_ok, luhn_ok, ssn_ok

ROOT = Path(__file__).resolve().parents[2]
R = Redactor()
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def labels(text: str, redactor: Redactor = R) -> list[tuple[str, str]]:
    return [(text[s:e], label) for s, e, label in redactor.detect(text)]


def one(text: str, label: str, value: str) -> None:
    found = labels(text)
    assert (value, label) in found, found


# ---------------------------------------------------------------- each entity type

V6 = "6e40:4041:c617:e898:c11:40d2:c669:2eb4"
SK = "sk_live_0042abcdefghijklmnopqrstuv"
GHP = "ghp_abcdefghijklmnopqrstuvwxyz0123456789"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dozjgNryP4J3jVmNHl0w5N_XgL0n3I9PlFUP0THsR8U"


@pytest.mark.parametrize(
    ("text", "label", "value"),
    [
        ("Contact me at jane.doe3@example.com for details.", EMAIL, "jane.doe3@example.com"),
        ("mail SzaszJanka@cuvox.de now", EMAIL, "SzaszJanka@cuvox.de"),
        ("Call +1 415 555 0199 after five.", PHONE, "+1 415 555 0199"),
        ("Reach me on +46 (0)8 928 571 38 today", PHONE, "+46 (0)8 928 571 38"),
        ("My number is (541) 714-1388.", PHONE, "(541) 714-1388"),
        ("ring 541-714-1388x565 please", PHONE, "541-714-1388x565"),
        ("Phone:\n0487 98 11 92\n", PHONE, "0487 98 11 92"),
        ("781 1704 office", PHONE, "781 1704"),
        ("My card is 4111 1111 1111 1111, expiry 12/29.", CREDIT_CARD, "4111 1111 1111 1111"),
        ("card 4111-1111-1111-1111", CREDIT_CARD, "4111-1111-1111-1111"),
        ("amex 3782 822463 10005 here", CREDIT_CARD, "3782 822463 10005"),
        ("The server at 203.0.113.7 keeps timing out.", IP_ADDRESS, "203.0.113.7"),
        ("inside 10.1.2.3 and", IP_ADDRESS, "10.1.2.3"),
        ("v6 2001:db8::8a2e:370:7334 down", IP_ADDRESS, "2001:db8::8a2e:370:7334"),
        (f"v6 {V6}.", IP_ADDRESS, V6),
        ("Wire it to DE89 3704 0044 0532 0130 00 please.", IBAN, "DE89 3704 0044 0532 0130 00"),
        ("My IBAN is GB93PITW55383148579181", IBAN, "GB93PITW55383148579181"),
        ("iban gb42nawi04454264788619 ok", IBAN, "gb42nawi04454264788619"),
        ("His social security number is 494-33-0748", NATIONAL_ID, "494-33-0748"),
        ("SSN 494330748 on file", NATIONAL_ID, "494330748"),
        ("My driver's license number is F162823540116", NATIONAL_ID, "F162823540116"),
        ("passport no. X1234567 expires", NATIONAL_ID, "X1234567"),
        ("NI number AB 12 34 56 C", NATIONAL_ID, "AB 12 34 56 C"),
        ("I live at 42 Elm Street, Springfield.", STREET_ADDRESS, "42 Elm Street, Springfield"),
        ("Send it to 1600 Pennsylvania Ave NW", STREET_ADDRESS, "1600 Pennsylvania Ave"),
        ("Meet me at Rua Diadema 1903 tomorrow", STREET_ADDRESS, "Rua Diadema 1903"),
        ("office: Friedhofstrasse 33, Wien", STREET_ADDRESS, "Friedhofstrasse 33, Wien"),
        ("PO: P.O. Box 242 only", STREET_ADDRESS, "P.O. Box 242"),
        ("PSC 3294, Box 9168\nAPO AA 61487", STREET_ADDRESS, "PSC 3294, Box 9168\nAPO AA 61487"),
        ("Springfield, IL 62704 is home", STREET_ADDRESS, "Springfield, IL 62704"),
        ("My name is Maria Gonzalez and I", PERSON, "Maria Gonzalez"),
        ("Dear Mr. Thompson, thank you", PERSON, "Thompson"),
        ("Hi Adomo, can you call?", PERSON, "Adomo"),
        ("I'm so jealous! said Erle to Maurice", PERSON, "Erle"),
        ("Marrero and Murphy were precision engineers.", PERSON, "Murphy"),
        ("directed by Joakim Westgård and starring Westgård", PERSON, "Joakim Westgård"),
        (f"Use the key {SK} now", CREDENTIAL, SK),
        ("AWS AKIAIOSFODNN7EXAMPLE leaked", CREDENTIAL, "AKIAIOSFODNN7EXAMPLE"),
        (f"token {GHP} ok", CREDENTIAL, GHP),
        ("Authorization: Bearer abc123def456ghi789jkl0", CREDENTIAL, "abc123def456ghi789jkl0"),
        ("db at postgres://admin:s3cr3t@db.internal:5432/app", CREDENTIAL, "admin:s3cr3t"),
        ("password=hunter2 and more", CREDENTIAL, "hunter2"),
        ('{"api_key": "abcd1234efgh"}', CREDENTIAL, "abcd1234efgh"),
        ("my password is Tr0ub4dor&3.", CREDENTIAL, "Tr0ub4dor&3"),
        (f"jwt {JWT} x", CREDENTIAL, JWT),
    ],
)  # fmt: skip
def test_r11_each_entity_type_is_caught(text: str, label: str, value: str) -> None:
    """R11: every kind R11 lists is detected with its own placeholder label."""
    one(text, label, value)
    assert placeholder(label) in R.redact(text).text


def test_r11_private_key_block_is_one_credential() -> None:
    """R11: a PEM private key is replaced as a whole, even when it is cut off."""
    key = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7\nabc\n-----END RSA PRIVATE KEY-----"
    out = R.redact(f"here:\n{key}\nthanks")
    assert out.text == "here:\n[CREDENTIAL]\nthanks"
    cut = R.redact("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAA")
    assert cut.text == "[CREDENTIAL]"


# ---------------------------------------------------------------- validators and near misses


def test_r11_validators() -> None:
    """R11 validators: Luhn, issuer lengths, IBAN mod-97 and registry length, IPv4 rules,
    SSN assignment rules."""
    assert luhn_ok("4111111111111111") and not luhn_ok("4111111111111112")
    assert card_ok("4111111111111111") and not card_ok("1700000000000004")
    assert iban_ok("DE89370400440532013000") and not iban_ok("DE89370400440532013001")
    assert not iban_ok("DE8937040044053201300")  # one character short for DE
    assert ipv4_ok("203.0.113.7") and ipv4_ok("192.168.1.20")
    assert not ipv4_ok("127.0.0.1") and not ipv4_ok("255.255.255.0") and not ipv4_ok("1.2.3.256")
    assert ssn_ok("494", "33", "0748")
    assert not ssn_ok("000", "12", "3456") and not ssn_ok("666", "12", "3456")
    assert not ssn_ok("912", "12", "3456") and not ssn_ok("123", "00", "4567")


@pytest.mark.parametrize(
    "text",
    [
        "Order 4111 1111 1111 1112 shipped",  # 16 digits, Luhn fails
        "ts=1700000000000 ms",  # 13 digits starting with 1
        "IBAN DE89370400440532013001 is wrong",  # mod-97 fails
        "version 1.2.3.4.5 released",
        "localhost 127.0.0.1 and mask 255.255.255.0",
        "call 0.0.0.0 anything",
        "ids 000-12-3456 and 666-12-3456 and 912-12-3456",
        "Our Q3 target is 1,250 new accounts, up from 980 in Q2.",
        "The meeting is on Tuesday, 14 March 2024 at 10:30 in Building B.",
        "Set max_tokens to 512 and temperature to 0.7.",
        "See https://docs.python.org/3/library/re.html for details.",
        "use std::vector and 12:30:45 timestamps",
        "The First World War ended in 1918.",
        "Reset your password: click the link below.",
        "password = os.environ['DB_PASSWORD']",
        "In 2023 the company moved its data platform to Kubernetes 1.27 on AWS.",
    ],
)
def test_r11_near_misses_are_left_alone(text: str) -> None:
    """R11 validators cut false positives: these texts hold no personal information."""
    assert R.redact(text).text == text, labels(text)


def test_r11_loopback_and_private_ranges_decision() -> None:
    """R11 decision: private addresses are redacted (they identify a device inside an
    organisation), loopback/unspecified/broadcast/netmasks are not."""
    assert R.redact("from 192.168.0.12 and 10.0.0.5").counts == {IP_ADDRESS: 2}
    assert R.redact("bind 127.0.0.1, ::1, 0.0.0.0").counts == {}


# ---------------------------------------------------------------- placeholders and counts


def test_r11_placeholders_are_typed_and_counted() -> None:
    """R11: each span becomes "[LABEL]" and counts say how many of each were replaced."""
    text = "a@x.io, b@y.io; call +44 20 7946 0958. Card 4111111111111111."
    out = R.redact(text)
    assert out.text == "[EMAIL], [EMAIL]; call [PHONE]. Card [CREDIT_CARD]."
    assert dict(out.counts) == {EMAIL: 2, PHONE: 1, CREDIT_CARD: 1}
    assert isinstance(out, Redaction)
    with pytest.raises(AttributeError):
        out.text = "x"  # type: ignore[misc]
    assert redact("no personal data here") == Redaction("no personal data here", {})
    assert set(LABELS) == {
        EMAIL, PHONE, CREDIT_CARD, IP_ADDRESS, IBAN, NATIONAL_ID, STREET_ADDRESS, PERSON,
        CREDENTIAL,
    }  # fmt: skip


def test_r11_empty_and_odd_input() -> None:
    """R11: empty text, and text a native engine cannot encode (lone surrogate), still work;
    the latter runs every detector (fail closed)."""
    assert R.redact("") == Redaction("", {})
    out = R.redact("bad \ud800 mail jane@example.com")
    assert out.text == "bad \ud800 mail [EMAIL]"


# ---------------------------------------------------------------- metadata


def test_r11_redact_mapping_recurses_and_keeps_other_values() -> None:
    """R11 for metadata: strings redacted in nested dicts and lists, numbers/bools/None kept,
    counts summed."""
    meta = {
        "user": "jane@example.com",
        "n": 3,
        "ok": True,
        "none": None,
        "nested": {"ip": "10.1.2.3", "tags": ["call +1 415 555 0100", 7, {"k": "x@y.io"}]},
    }
    out, counts = R.redact_mapping(meta)
    assert out == {
        "user": "[EMAIL]",
        "n": 3,
        "ok": True,
        "none": None,
        "nested": {"ip": "[IP_ADDRESS]", "tags": ["call [PHONE]", 7, {"k": "[EMAIL]"}]},
    }
    assert counts == {EMAIL: 2, IP_ADDRESS: 1, PHONE: 1}
    assert meta["user"] == "jane@example.com"  # input untouched


def test_r11_redact_mapping_redacts_keys_without_losing_entries() -> None:
    """R11: a key holding personal information is redacted; colliding keys stay distinct."""
    out, counts = R.redact_mapping({"a@x.io": "1", "b@y.io": "2", "plain": "3"})
    assert out == {"[EMAIL]": "1", "[EMAIL]#2": "2", "plain": "3"}
    assert counts == {EMAIL: 2}


# ---------------------------------------------------------------- idempotence


SAMPLES = [
    "Contact me at jane.doe3@example.com or +1 415 555 0199.",
    "My name is Maria Gonzalez and I live at 42 Elm Street, Springfield.",
    "William Hughes\n\n20789 Allika 46\n Suite 501\n Riisa\n\n Estonia 62488",
    "password=hunter2 Bearer abcdefghijklmnop1234 postgres://u:p@h/db",
    "Mrs. Barbara Yudina Apt. 675 62314 Mellemvej 32\nAalborg NO 9100",
    ">Ella H. Snider\n>Otc Markets\n>228 Ringvej 144\n>Apt. 902\n>Qaqortoq\n>Greenlander 96817",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_r11_idempotent_on_samples(text: str) -> None:
    """R11: redacting redacted text changes nothing and counts nothing."""
    once = R.redact(text)
    assert once.counts
    twice = R.redact(once.text)
    assert twice.text == once.text and dict(twice.counts) == {}


# ---------------------------------------------------------------- property tests

WORDS = (
    "the a report shows growth across regions while costs remained stable please summarise "
    "key risks for board and suggest three mitigations our team needs friendly reply about "
    "delayed shipment translate this paragraph into formal tone write function that parses "
    "log file returns slowest requests compare two contracts list every clause where terms "
    "differ model data training pipeline stream topic record value"
).split()
TLDS = ["com", "org", "io", "de", "co.uk"]


@st.composite
def emails(draw: st.DrawFn) -> str:
    local = draw(st.text(string.ascii_lowercase + string.digits + "._+-", min_size=1, max_size=12))
    assume(local[0].isalnum() and local[-1].isalnum() and ".." not in local)
    host = draw(st.text(string.ascii_lowercase + string.digits, min_size=1, max_size=10))
    return f"{local}@{host}.{draw(st.sampled_from(TLDS))}"


@st.composite
def cards(draw: st.DrawFn) -> str:
    prefix = draw(st.sampled_from(["4", "51", "55", "2221", "34", "37", "6011", "3528"]))
    length = {"34": 15, "37": 15}.get(prefix, 16)
    body = prefix + "".join(
        draw(st.lists(st.sampled_from(string.digits), min_size=length - len(prefix) - 1,
                      max_size=length - len(prefix) - 1))
    )  # fmt: skip
    for check in string.digits:
        if luhn_ok(body + check):
            number = body + check
            break
    if draw(st.booleans()) and length == 16:
        number = " ".join(number[i : i + 4] for i in range(0, 16, 4))
    return number


prose = st.lists(st.sampled_from(WORDS), min_size=0, max_size=30).map(" ".join)


@PROPS
@given(prose, emails(), cards(), prose)
def test_r11_property_no_generated_email_or_card_survives(
    before: str, email: str, card: str, after: str
) -> None:
    """R11 property: a generated e-mail address or Luhn-valid card in running text never
    reaches the output, and each is counted."""
    text = f"{before} {email} {after} {card}. {before}"
    out = R.redact(text)
    assert email not in out.text and card not in out.text
    assert out.counts.get(EMAIL) == 1 and out.counts.get(CREDIT_CARD) == 1


@PROPS
@given(st.lists(st.sampled_from(WORDS + [",", ".", "!", "?"]), max_size=60).map(" ".join))
def test_r11_property_plain_lower_case_prose_is_unchanged(text: str) -> None:
    """R11 property: prose without digits, '@', capitals or secrets is left exactly as is."""
    assert R.redact(text).text == text


FRAGMENTS = [
    "jane@example.com", "+1 415 555 0199", "4111 1111 1111 1111", "203.0.113.7",
    "DE89 3704 0044 0532 0130 00", "494-33-0748", "42 Elm Street", "Rua Diadema 1903",
    "Mr. Thompson", "Maria Gonzalez", "password=hunter2", "sk_live_0042abcdefghijklmnopqrstuv",
    "Apt. 12", "Springfield, IL 62704", "call me on 781 1704", "14 March 2024", "2001:db8::1",
    "my name is", "lives at", "Suite", "Avenue", "Via", "vej", "\n", ", ", "42", "Anna",
]  # fmt: skip
noisy = st.lists(
    st.one_of(st.sampled_from(FRAGMENTS), st.sampled_from(WORDS), st.text(max_size=6)),
    max_size=25,
).map(" ".join)


@PROPS
@given(noisy)
def test_r11_property_engines_are_exact(text: str) -> None:
    """R11 property: the multi-pattern pre-filter never changes the result. Every engine gives
    the same spans as running every detector without a pre-filter (triggers are supersets)."""
    expected = UNFILTERED.detect(text)
    for redactor in ENGINE_REDACTORS:
        assert redactor.detect(text) == expected, redactor.engine


@PROPS
@given(noisy)
def test_r11_property_engines_are_exact_on_lower_case_text(text: str) -> None:
    """R11 property: the same on all-lower-case text, where the engine scan also answers the
    lower-case address gate and lets the name lexicon gate be skipped."""
    text = text.lower()
    expected = UNFILTERED.detect(text)
    for redactor in ENGINE_REDACTORS:
        assert redactor.detect(text) == expected, redactor.engine


@PROPS
@given(noisy)
def test_r11_property_idempotent(text: str) -> None:
    """R11 property: redaction is idempotent on arbitrary mixes of personal data and noise."""
    once = R.redact(text)
    twice = R.redact(once.text)
    assert twice.text == once.text


def _engine_redactors() -> list[Redactor]:
    out = []
    for name in ENGINES:
        if name in ("none", "re"):  # "re" is exact too, only too slow for 150 examples
            continue
        try:
            out.append(Redactor(engine=name))
        except ImportError:  # hyperscan is optional
            continue
    return out


UNFILTERED = Redactor(engine="none")
ENGINE_REDACTORS = _engine_redactors()


# Other decimal digits that Python's ``\d`` accepts: Arabic-Indic, Extended Arabic-Indic
# (Persian), Devanagari, full-width, Bengali, mathematical bold.
UNICODE_DIGITS = ("٠١٢٣٤٥٦٧٨٩", "۰۱۲۳۴۵۶۷۸۹", "०१२३४५६७८९", "０１２３４５６７８９", "০১২৩৪৫৬৭৮৯",
                  "𝟎𝟏𝟐𝟑𝟒𝟓𝟔𝟕𝟖𝟗")  # fmt: skip


def _digits_as(text: str, digits: str) -> str:
    return "".join(digits[int(c)] if "0" <= c <= "9" else c for c in text)


UNICODE_TEXTS = [
    "i live at ٤٢ elm street, springfield", "I live at ٤٢ Elm Street, Springfield",
    "٤٢ Elm Street", "４２ Elm Street, Springfield", "Office: ４２ Elm Street",
    "Rua Diadema ١٩٠٣", "Søndergade ٥٢", "Apt. ٥", "P.O. Box ٢٤٢", "apo aa ٦١٤٨٧",
    "Springfield, IL ٦٢٧٠٤", "20789 Allika ٤٦", "٤٢ Rue de Pologne", "meet me at\n४२ elm street",
    "call ٤١٥ ٥٥٥ ٠١٩٩", "card ٤١١١ ١١١١ ١١١١ ١١١١", "ssn ٤٩٤-٣٣-٠٧٤٨", "NI AB ١٢ ٣٤ ٥٦ C",
    "passport no. X١٢٣٤٥٦٧", "+１ ４１５ ５５５ ０１９９", "203.0.113.٧", "my pin is ٤٨٢١",
    "bearer\xa0abcdefghijklmnop1234", "password is\u3000hunter2",
    # Not Unicode, found with them: the triggers did not cover these finder cases either.
    "12a Elm Street", "i serve on the uss enterprise", "my pin code is 4821",
    "my password is:hunter2", "Passport number:\nX1234567", "passport" + " " * 50 + "X1234567",
]  # fmt: skip


def _assert_every_engine_matches_none(text: str) -> None:
    expected = UNFILTERED.redact(text)
    for name in ENGINES:
        try:
            redactor = Redactor(engine=name)
        except ImportError:  # hyperscan is optional
            continue
        assert redactor.redact(text) == expected, name


@pytest.mark.parametrize("text", UNICODE_TEXTS)
def test_r11_engines_agree_on_unicode_digits_and_spaces(text: str) -> None:
    """R11 fail-closed pre-filter: the finders' ``\\d`` and ``\\s`` are Unicode, so the triggers
    must fire on other digits and spaces too; every engine (also ``re``) matches ``none``."""
    _assert_every_engine_matches_none(text)


def test_r11_unicode_digit_address_is_redacted() -> None:
    """R11 (the reported case): an address with Arabic-Indic digits in lower-case text."""
    assert R.redact("i live at ٤٢ elm street, springfield").text == "i live at [STREET_ADDRESS]"


MONTH_LIKE_TEXTS = [
    "Tuesday, 14 March 2024 at 10:30", "on 3 MAY 2021 in", "14 Mar. Street 5", "14 Marc Street 5",
    "20789 Mayer Allee 46", "12 Ma. Oak 5", "12 Juni 4", "12 Jun 4", "12 Junction 4",
    "12 Sept 2024", "12 Septa Lane 4", "12 Dec Road 4", "12 Décor 4", "12 Maß 4", "12 M 4",
    "12 Augusta 7", "12 August 7", "12 Ap'ril 7", "12 April. Oak 7", "12 Noël 5", "12 Nov 5",
]  # fmt: skip


@pytest.mark.parametrize("text", MONTH_LIKE_TEXTS)
def test_r11_sandwich_trigger_skips_only_month_names(text: str) -> None:
    """R11 pre-filter: the "number word number" trigger does not fire on "14 March 2024" (the
    finder skips month names) but still covers every other first word."""
    for variant in (text, f"Lives at:\n{text}\nSpringfield"):
        expected = UNFILTERED.detect(variant)
        for redactor in ENGINE_REDACTORS:
            assert redactor.detect(variant) == expected, redactor.engine


def test_r11_sandwich_trigger_is_quiet_on_dates() -> None:
    """R11 speed: a date in prose runs no address finder (only the name lexicon gate)."""
    text = "The meeting is scheduled for Tuesday, 14 March 2024 at 10:30 in Building B."
    assert R._engine.fired(text) == set()
    assert R.redact(text).text == text


def test_r11_trigger_digit_covers_every_unicode_decimal() -> None:
    """R11: the triggers' DIGIT class is exactly Python's ``\\d`` for str on this Python."""
    every = "".join(map(chr, range(sys.maxunicode + 1)))
    assert re.findall(DIGIT, every) == [c for c in every if c.isdecimal()]


@PROPS
@given(noisy, st.sampled_from(UNICODE_DIGITS), st.sampled_from(["", "\xa0", "\u2003", "\x1c"]))
def test_r11_property_engines_are_exact_with_unicode_digits(
    text: str, digits: str, space: str
) -> None:
    """R11 property: the same with the digits of the fragments written in another script (and
    some spaces as Unicode spaces), in mixed and all-lower case."""
    text = _digits_as(text, digits)
    if space:
        text = text.replace(" ", space, 3)
    for variant in (text, text.lower()):
        expected = UNFILTERED.detect(variant)
        for redactor in ENGINE_REDACTORS:
            assert redactor.detect(variant) == expected, redactor.engine


# ---------------------------------------------------------------- speed guard


# Address-phrase and phone-word triggers count words (or nothing) instead of a window of
# characters (``_address``, ``_detectors``): the finders' limits must still be covered.
CUE_WINDOW_TEXTS = [
    "lives at Foo Bar Baz Qux 77", "lives at Foo Bar Baz Qux Quux 77", "lives at 12 Elm Street",
    "Address:\n  The Old Mill 42", "meet me at Rua Diadema 1903 tomorrow", "go to A B C D E F 9",
    "She lives at İnönü Caddesi 12", "İ lives at Foo Bar 12", "lives at Foo\u00a0Bar 12",
    "LIVES AT FOO BAR 12", "lives at Foo  Bar   12", "lives at Foo\tBar 12",
    "call me, the number is, as I said a few lines above, 555 123 4567",
    "phone" + " x" * 40 + " 555 123 4567", "tel 5 then 555 123 4567", "Call 4155550199 now",
]  # fmt: skip


@pytest.mark.parametrize("text", CUE_WINDOW_TEXTS)
def test_r11_engines_agree_on_cue_windows(text: str) -> None:
    """R11 fail-closed pre-filter: every engine matches ``none`` around the word limits."""
    _assert_every_engine_matches_none(text)


def test_r11_short_texts_are_cached_exactly_and_boundedly() -> None:
    """Short texts (metadata keys and values) are remembered: the same result as computing
    it, and the cache stays bounded."""
    from streams.policy.redaction import _CACHE_SIZE

    r = Redactor()
    for text in ("demo", "Demo", "app-7", "apt5", "Jane Doe", "jane@example.com", "", "42"):
        first = r.redact(text)
        assert first == r._redact(text) == UNFILTERED._redact(text)
        assert r.redact(text) is first
    assert r.redact("apt5").text == placeholder(STREET_ADDRESS)
    assert r.redact("Demo").text == placeholder(PERSON)  # a surname
    for i in range(_CACHE_SIZE + 10):
        r.redact(f"value-{i}")
    assert len(r._short) <= _CACHE_SIZE
    long_text = "x" * 100
    r.redact(long_text)
    assert long_text not in r._short


def test_r11_typical_pair_is_fast_enough() -> None:
    """R11 speed guard (loose, CI machines are shared): a ~1.3 KB prompt + generation pair
    without personal data costs well under a millisecond of CPU on average."""
    speed = _load("redaction_speed")
    pairs = [(p, g) for p, g, pii in speed.corpus(300) if not pii]
    for p, g in pairs[:20]:
        R.redact(p), R.redact(g)
    t0 = time.process_time()
    for p, g in pairs:
        R.redact(p)
        R.redact(g)
    per_pair = (time.process_time() - t0) / len(pairs)
    assert per_pair < 500e-6, f"{per_pair * 1e6:.0f} µs per pair"


@pytest.mark.parametrize(
    "unit",
    ["Apt. 1 ", "1234 ", "corner of Abc and Def, ", "call 555 1234 ", "Anna Lee, ", "a:b:"],
)
def test_r11_hostile_long_inputs_stay_linear(unit: str) -> None:
    """R11 robustness: repetitive hostile text costs time linear in its length (4x the text
    may not cost 16x: no quadratic growth, no catastrophic backtracking)."""

    def cost(n: int) -> float:
        text = unit * (n // len(unit))
        runs = []
        for _ in range(3):  # the least of three: other processes share the cores
            t0 = time.process_time()
            R.redact(text)
            runs.append(time.process_time() - t0)
        return min(runs)

    small, large = cost(10_000), cost(40_000)
    assert large < 2.0, f"{large:.2f} s for 40 KB"
    assert large < 10 * max(small, 0.002), (small, large)


# ---------------------------------------------------------------- accuracy targets


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_r11_eval_meets_targets_on_presidio_synth_dataset() -> None:
    """R11 accuracy (benchmarks/redaction_eval.py): over the in-scope types, span-level
    recall > 0.84 and precision > 0.87 on the full set and on the held-out templates; recall
    >= 0.99 for e-mail, phone, card, IP, IBAN, SSN and driver licence."""
    ev = _load("redaction_eval")
    if not ev.DATASET.exists():
        pytest.skip(f"dataset not present: {ev.DATASET}")
    results = ev.evaluate(redactor=R)
    for split in ("FULL", "HELD-OUT"):
        sc = results[split]
        assert sc.overall_recall > ev.TARGETS["recall"], (split, sc.overall_recall)
        assert sc.overall_precision > ev.TARGETS["precision"], (split, sc.overall_precision)
    full = results["FULL"]
    for etype in ev.STRUCTURED:
        assert full.gold[etype] > 0, etype
        assert full.recall(etype) >= ev.TARGETS["structured_recall"], (etype, full.recall(etype))


LOWER_ADDRESS_FRAGMENTS = [
    "12", "7b", "3/4", "main", "elm", "st", "street", "st.", "ave", "u.", "u", "rue", "r.", "r",
    "c/", "c", "al.", "pl", "place", "route", "via", "calle", "mellemvej", "friedhofstrasse",
    "vej", "xstr", "apt", "apt5", "suite", "p.o.", "box", "pobox", "po", "uss", "apo", "aa",
    "postfach", "of", "the", "de", ".", ",", "/", "#", "-", "\n", "  ",
]  # fmt: skip


@PROPS
@given(
    st.lists(
        st.one_of(
            st.sampled_from(LOWER_ADDRESS_FRAGMENTS), st.text(string.ascii_lowercase, max_size=4)
        ),
        max_size=30,
    ).map(lambda words: " ".join(words) if len(words) % 2 else "".join(words))
)
def test_r11_property_lower_case_address_gates_are_supersets(text: str) -> None:
    """R11 property: a lower-case address rule skipped by the word gates of all-lower-case
    ASCII text finds no core there (the gates only spare the cost of running it)."""
    from streams.policy.redaction import _address as a

    assume(text.islower())
    kept = a._lower_case_parts(text, a._PARTS)
    for part in a._PARTS:
        if part not in kept:
            assert a._cores(part, text, text, a._LOWER) == [], part


CONTEXT_FRAGMENTS = [
    "my name is", "my name's", "name:", "name?", "names are", "dear", "hi", "attn:", "c/o",
    "by", "said", "our fiancée", "my neighbour", "mr", "mrs.", "dr", "prof", "x", "é", "9",
    "(", ".", "'", " ", "  ", "\t", ",", ":", "?", "\n",
]  # fmt: skip


@PROPS
@given(st.lists(st.sampled_from(CONTEXT_FRAGMENTS), max_size=12).map("".join))
def test_r11_property_name_context_look_is_exact(before: str) -> None:
    """R11 property: looking at the end of the window first gives the same answer as
    searching it for a context phrase or a title."""
    from streams.policy.redaction import _names as n

    expected = (bool(n._STRONG_BEFORE.search(before)), bool(n._HONORIFIC_BEFORE.search(before)))
    assert n._context_before(before) == expected


# ---------------------------------------------------------------- names in any letter case


@pytest.mark.parametrize(
    ("text", "name"),
    [
        # titles, also glued and in ALL CAPS
        ("per dr. kenny ok to advance diet", "kenny"),
        ("Seen by Dr.Sawtelle this am", "Sawtelle"),
        ("SPOKE WITH DR MAHONEY RE: PLAN.", "MAHONEY"),
        ("dear mrs. kowalski, thank you", "kowalski"),
        # relations, with the punctuation people put around them
        ("the pt's son, bill, called at 1400", "bill"),
        ("DAUGHTER-KRISSY---301 944-5032 wants a call", "KRISSY"),
        ("pt states her husband frank will pick her up", "frank"),
        ("NOK: SISTER ROSE (508) 555-0177", "ROSE"),
        ("case mgmt (theresa) working on placement", "theresa"),
        # greetings and sign-offs
        ("hey jess are we still on for lunch", "jess"),
        ("thx frank", "frank"),
        ("Cheers,\nrob", "rob"),
        ("signed, t. nguyen", "t. nguyen"),
        # clinical hand-over cues
        ("d/w dr goldberg, will start abx", "goldberg"),
        ("called pharmacy, spoke w/ karen, will send up", "karen"),
        ("paged dr. patel x2", "patel"),
        # speech verbs and possessives after the name
        ("lol tom said the same thing", "tom"),
        ("BILL SAID HE WOULD BRING THE PROJECTOR", "BILL"),
        ("noah's mom texted, pickup moved to 4", "noah"),
        # signature lines
        ("VSS. NO ACUTE DISTRESS.\nMURIELE WILLIAM RN", "MURIELE WILLIAM"),
        ("c. evans, lpn", "c. evans"),
        # distinct first names need no cue, in lower case or ALL CAPS
        ("PER DOUGLASS WILL HOLD HEPARIN", "DOUGLASS"),
        ("olga is presenting tomorrow", "olga"),
        ("tyler and mia are getting married", "mia"),
        ("please forward this to kevin walsh in accounts", "kevin walsh"),
        # @handles that are names or mention headers
        ("RT @anthonyuJR: cant believe the game", "@anthonyuJR"),
        ("omg @kaylaxoxo you have to see this", "@kaylaxoxo"),
        ("@realjohnsmith this is fake news", "@realjohnsmith"),
    ],
)  # fmt: skip
def test_r11_names_in_any_letter_case(text: str, name: str) -> None:
    """R11 (issue #17): names written in lower case, ALL CAPS, with initials, glued to a
    title, in signature lines or as @handles are redacted, each from its context."""
    out = R.redact(text).text
    assert name not in out, (out, labels(text))
    assert placeholder(PERSON) in out


@pytest.mark.parametrize(
    "text",
    [
        "will you bill me for the extra hours or should i pay now?",
        "may i ask what the deadline is? i will mark it in the calendar.",
        "frank discussion with the team about the rose garden project.",
        "Foley catheter removed at 0600. Voided 300 ml.",
        "Swan-Ganz catheter in place, wedge 14. Aline to be removed tomorrow.",
        "Oh and the Toyota is in the shop again.",
        "ENDO AND CARDS FOLLOWING. SWAN D/C'D, ALINE INTACT.",
        "per protocol, q4h neuro checks. per family, pt lives alone.",
        "PT AND WIFE AGREEABLE TO PLAN. MAY NEED INTUBATION IF WORSENS.",
        "@dataclass\nclass Config:\n    name: str\n",
        "@here standup in 5",
        "the migration script is called by cron every night",
        "my son said the app keeps crashing",
        "my daughter wants to learn python, any tips?",
        "spoke with pharmacy, med is on backorder",
        "max_len = max(len(a), len(b))",
    ],
)
def test_r11_any_case_names_leave_words_alone(text: str) -> None:
    """R11 precision (issue #17): clinical words that are surnames, names that are common
    words without a cue, decorators, team mentions and code stay as they are."""
    found = [v for v, label in labels(text) if label == PERSON]
    assert found == [], found


@pytest.mark.parametrize(
    ("text", "number"),
    [
        ("DAUGHTER-KRISSY---301 944-5032", "301 944-5032"),
        ("wife joan (201/324/1423) prefers calls", "201/324/1423"),
        ("DAUGHTER-LORI-978-555-0102", "978-555-0102"),
        ("Pager #54321 for any questions", "54321"),
        ("awaiting call back. pgr 4417", "4417"),
        ("beeper 3-4417", "3-4417"),
        ("Extension 4521 for the charge nurse.", "4521"),
        ("cb 555-0143", "555-0143"),
        ("call Ms. Alvarez back at 555-0182?", "555-0182"),
        ("son jake ph:5085550123", "5085550123"),
        ("husband's cell 617.555.0192", "617.555.0192"),
    ],
)
def test_r11_phones_as_people_write_them(text: str, number: str) -> None:
    """R11 (issue #17): phone numbers with slashes, dots, glued to words and dashes, local
    numbers, and short pager/extension numbers after their word."""
    out = R.redact(text).text
    assert number not in out, (out, labels(text))
    assert placeholder(PHONE) in out


@pytest.mark.parametrize(
    "text",
    [
        "Looking to support Zonability in Tokoza Ext 1426 in its mission.",
        "BP 132/84 HR 88 RR 18, i&o 1200/850",
        "The meeting is on 12/03/2024 at 10.30 in room 5.",
        "Version 3.2.1 fixes 120 of 130 cases; build 2024-0113.",
    ],
)
def test_r11_phone_forms_leave_other_numbers_alone(text: str) -> None:
    """R11 precision: the new phone forms do not take vitals, dates, versions or a
    township extension ("Ext 1426" after a place name) for phone numbers."""
    assert [v for v, label in labels(text) if label == PHONE] == []


_ANY_CASE_NAMES = ["krissy", "douglass", "olga", "jessica", "brandon", "hannah", "marcus"]
_ANY_CASE_CUES = ["hi {}", "per dr. {}", "son, {}, called", "{} said", "thanks {}!",
                  "DAUGHTER-{}", "wife {} at bedside", "{} is here"]  # fmt: skip


@PROPS
@given(
    st.sampled_from(_ANY_CASE_NAMES),
    st.sampled_from(_ANY_CASE_CUES),
    st.sampled_from([str.lower, str.upper, str.title]),
    prose,
    prose,
)
def test_r11_property_detected_name_never_survives(
    name: str, cue: str, case: object, before: str, after: str
) -> None:
    """R11 property (issue #17): whatever the letter case and the prose around it, a name
    the redactor detects leaves no trace of its text in the output: every occurrence of a
    detected name's text (a second mention included) is replaced."""
    written = case(name)  # type: ignore[operator]
    text = f"{before} {cue.format(written)} {after}. {written} called back"
    spans = R.detect(text)
    out = R.redact(text).text
    detected = {text[s:e] for s, e, label in spans if label == PERSON}
    assert detected, (text, spans)
    for value in detected:
        assert value not in out, (value, out)
    assert written not in out, out


def test_r11_any_case_triggers_are_exact_on_samples() -> None:
    """R11: the engines agree with running every detector on the issue's examples (the new
    triggers are supersets of what their finders take)."""
    samples = [
        "PER DOUGLASS WILL HOLD", "per dr. kenny", "the pt's son, bill, called",
        "MURIELE WILLIAM RN", "Seen by Dr.Sawtelle", "RT @anthonyuJR: x", "J SMITH",
        "DAUGHTER-KRISSY---301 944-5032", "(201/324/1423)", "Pager #54321", "ſigned, x",
        "hi \u212aevin", "spoke w/ karen", "noah's mom", "bill SAID", "c. evans, lpn",
    ]  # fmt: skip
    for text in samples:
        expected = UNFILTERED.detect(text)
        for redactor in ENGINE_REDACTORS:
            assert redactor.detect(text) == expected, (text, redactor.engine)


def test_r11_vital_sign_limits_are_no_street_address() -> None:
    """R11 precision (issue #17): "sbp 120 or less per dr." in lower-case notes is a limit
    ordered by a doctor, not "120 ... Drive"; a lower-case street still is an address."""
    assert [
        v for v, label in labels("keep sbp 120 or less per dr.") if label == STREET_ADDRESS
    ] == []
    one("meet at 1200 ocean view dr tonight", STREET_ADDRESS, "1200 ocean view dr")


def test_r11_eval_meets_targets_on_human_style_set() -> None:
    """R11 accuracy (issue #17, benchmarks/redaction_eval.py --set human): on the DEV
    human-style set, PERSON recall >= 0.80 at precision >= 0.60 in every letter case with at
    least 20 names, phone recall >= 0.95; and no loss on the synthetic set (span precision
    >= 0.92, recall >= 0.91)."""
    ev = _load("redaction_eval")
    human, cases = ev.evaluate_human(R)
    dev = cases["DEV"]
    measured = [case for case in ev.CASES if dev.gold[case] >= 20]
    assert {"Title", "UPPER", "lower"} <= set(measured), measured
    for case in measured:
        assert dev.found[case] / dev.gold[case] >= ev.HUMAN_TARGETS["person_recall"], case
        assert dev.tp[case] / dev.predicted[case] >= ev.HUMAN_TARGETS["person_precision"], case
    assert human["DEV"].recall("PHONE_NUMBER") >= ev.HUMAN_TARGETS["phone_recall"]
    if ev.DATASET.exists():
        full = ev.evaluate(redactor=R)["FULL"]
        assert full.overall_precision >= 0.92 and full.overall_recall >= 0.91
