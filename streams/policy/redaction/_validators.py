"""R11 validators: checksums and range rules that turn a pattern hit into a detection.

Each function is pure and cheap; they exist to cut false positives of the patterns in
``_detectors`` (a 16-digit order number is not a card unless it passes Luhn, etc.).
"""

from __future__ import annotations

import ipaddress

# ISO 13616 IBAN registry: country code -> total length (SWIFT registry, release 2024).
IBAN_LENGTHS: dict[str, int] = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BI": 27, "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DJ": 27,
    "DK": 18, "DO": 28, "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FK": 18, "FO": 18, "FR": 27,
    "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22,
    "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32,
    "LI": 21, "LT": 20, "LU": 20, "LV": 21, "LY": 25, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MN": 20, "MR": 27, "MT": 31, "MU": 30, "NI": 28, "NL": 18, "NO": 15, "OM": 23, "PK": 24,
    "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "RU": 33, "SA": 24, "SC": 31,
    "SD": 18, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "SO": 23, "ST": 25, "SV": 28, "TL": 23,
    "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20, "YE": 30,
}  # fmt: skip


def luhn_ok(digits: str) -> bool:
    """Luhn (mod 10) check over a string of ASCII digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i & 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def card_ok(digits: str) -> bool:
    """A payment card number: Luhn-valid, with a length that fits its issuer prefix (IIN).

    Accepted: Visa 4 (13-19), Mastercard 51-55 / 2221-2720 (16), Amex 34/37 (15),
    Diners 30/36/38/39 (14-19), JCB 35 (16-19) and 1800/2131 (15), Discover/UnionPay/RuPay 6
    (16-19), Mir 2200-2204 (16-19), Maestro 50/56-69 (12-19). Anything else (in particular
    millisecond timestamps starting with 1) is rejected.
    """
    n = len(digits)
    if n < 12 or n > 19 or not luhn_ok(digits):
        return False
    first = digits[0]
    p2 = int(digits[:2])
    p4 = int(digits[:4])
    if first == "4":
        return n >= 13
    if first == "5":
        return n >= 12 if (p2 == 50 or p2 >= 56) else n == 16
    if first == "6":
        return n >= 12
    if first == "3":
        if p2 in (34, 37):
            return n == 15
        return n >= 14
    if first == "2":
        if 2200 <= p4 <= 2204:
            return n >= 16
        if 2221 <= p4 <= 2720:
            return n == 16
        return p4 == 2131 and n == 15
    if first == "1":
        return p4 == 1800 and n == 15
    return False


def iban_ok(compact: str) -> bool:
    """ISO 13616: known country, registry length, and mod-97 remainder 1 (ISO 7064)."""
    s = compact.upper()
    if len(s) < 15 or IBAN_LENGTHS.get(s[:2]) != len(s) or not s[2:4].isdigit():
        return False
    if not s.isalnum() or not s.isascii():
        return False
    rearranged = s[4:] + s[:4]
    remainder = 0
    for ch in rearranged:
        remainder = (remainder * (100 if ch.isalpha() else 10) + int(ch, 36)) % 97
    return remainder == 1


def ssn_ok(area: str, group: str, serial: str) -> bool:
    """US SSN assignment rules: area not 000/666/900-999, group not 00, serial not 0000."""
    a = int(area)
    return a != 0 and a != 666 and a < 900 and group != "00" and serial != "0000"


def ipv4_ok(candidate: str) -> bool:
    """A valid dotted quad that can point at a person's machine.

    Rejected (not personal information): loopback 127/8, the unspecified and broadcast
    addresses, netmasks (255.x.y.z with contiguous one bits), and octets with leading zeros
    (those are versions, dates or section numbers, not addresses). Private (RFC 1918),
    link-local, CGNAT and documentation ranges ARE redacted: inside an organisation they
    identify a device and so its user, and R11 makes no exception for them.
    """
    parts = candidate.split(".")
    if len(parts) != 4:
        return False
    value = 0
    for p in parts:
        if not p or len(p) > 3 or (len(p) > 1 and p[0] == "0"):
            return False
        o = int(p)
        if o > 255:
            return False
        value = (value << 8) | o
    if parts[0] == "127" or value == 0 or value == 0xFFFFFFFF:
        return False
    if parts[0] == "255":
        inverted = ~value & 0xFFFFFFFF
        if inverted & (inverted + 1) == 0:  # contiguous ones: a netmask
            return False
    return True


def ipv6_ok(candidate: str) -> bool:
    """A valid IPv6 address (any form ``ipaddress`` accepts) that is not loopback/unspecified
    and does not look like a C++/Rust path or a clock time: it needs at least two non-empty
    groups and a digit somewhere."""
    if candidate.count(":") < 2:
        return False
    try:
        addr = ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    if addr.is_loopback or addr.is_unspecified:
        return False
    groups = [g for g in candidate.split(":") if g]
    return len(groups) >= 2 and any(c.isdigit() for c in candidate)


def nino_ok(compact: str) -> bool:
    """UK National Insurance number prefix rules (HMRC): no D/F/I/Q/U/V, no O second,
    and none of the unallocated pairs."""
    prefix = compact[:2].upper()
    return prefix not in {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}
