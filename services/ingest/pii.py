"""PII protection before storage.

Detects, in prompts, outputs and free-text fields: secrets and API keys, private keys,
credit card numbers (Luhn-checked), IBANs (mod-97-checked), e-mail addresses, IP
addresses (v4 and v6, validated), national ids (US SSN, UK National Insurance number,
Spanish DNI/NIE with its check letter, French NIR) and phone numbers.

Per tenant, a policy decides what reaches ClickHouse:

- ``redact``: each finding becomes ``[EMAIL]``, ``[CARD]``...
- ``hash``: each finding becomes ``[EMAIL:1a2b3c4d5e6f]``, an HMAC-SHA256 of the value
  under a secret key, so equal values still join and count without being readable;
- ``drop``: a text with any finding is not stored at all;
- ``store_text: false``: no raw text is stored for the tenant, findings or not.

What was found is counted per kind, so SREs can see how much was protected.

Example::

    >>> scrub("mail bob@example.com", PiiPolicy(mode="redact")).text
    'mail [EMAIL]'
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Callable, Literal

from pydantic import BaseModel, ConfigDict

Mode = Literal["redact", "hash", "drop"]


class PiiPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Mode = "redact"
    store_text: bool = True


@dataclass(frozen=True)
class Finding:
    kind: str
    start: int
    end: int


@dataclass
class Scrubbed:
    text: str | None
    counts: dict[str, int] = field(default_factory=dict)
    dropped: bool = False


def _luhn(digits: str) -> bool:
    total, alt = 0, False
    for ch in reversed(digits):
        d = ord(ch) - 48
        if alt:
            d *= 2
            if d > 9:
                d -= 9
        total += d
        alt = not alt
    return total % 10 == 0


def _iban_ok(raw: str) -> bool:
    s = re.sub(r"\s+", "", raw).upper()
    if not 15 <= len(s) <= 34:
        return False
    rearranged = s[4:] + s[:4]
    try:
        return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1
    except ValueError:
        return False


def _dni_ok(raw: str) -> bool:
    s = raw.upper()
    letters = "TRWAGMYFPDXBNJZSQVHLCKE"
    if s[0] in "XYZ":  # NIE
        s = str("XYZ".index(s[0])) + s[1:]
    return letters[int(s[:8]) % 23] == s[8]


def _ip_ok(raw: str) -> bool:
    try:
        ip = ipaddress.ip_address(raw)
    except ValueError:
        return False
    return not (isinstance(ip, ipaddress.IPv4Address) and raw.count(".") != 3)


def _phone_ok(raw: str) -> bool:
    digits = re.sub(r"\D", "", raw)
    return 8 <= len(digits) <= 15


# Order matters: earlier detectors claim their spans first (a card is not also a phone).
_DETECTORS: list[tuple[str, re.Pattern[str], Callable[[str], bool] | None]] = [
    ("PRIVATE_KEY", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----"), None),
    (
        "SECRET",
        re.compile(
            r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"  # AWS access key id
            r"|\bsk-(?:proj-|live-|test-)?[A-Za-z0-9_-]{20,}"  # OpenAI / Stripe style
            r"|\bgh[pousr]_[A-Za-z0-9]{36,}\b"  # GitHub tokens
            r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"  # Slack tokens
            r"|\bAIza[0-9A-Za-z_-]{35}\b"  # Google API keys
            r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWT
            r"|(?i:\b(?:api[_-]?key|secret|token|passw(?:or)?d)\b\s*[:=]\s*)[^\s'\"]{8,}"
        ),
        None,
    ),
    ("EMAIL", re.compile(r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"), None),
    ("IBAN", re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b"), _iban_ok),
    ("CARD", re.compile(r"\b\d(?:[ -]?\d){12,18}\b"), lambda s: _luhn(re.sub(r"\D", "", s))),
    ("SSN", re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"), None),
    (
        "NATIONAL_ID",
        re.compile(
            r"\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"  # UK NINO
            r"|\b[12] ?\d{2} ?(?:0[1-9]|1[0-2]) ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}\b"  # French NIR
        ),
        None,
    ),
    ("NATIONAL_ID", re.compile(r"\b[XYZ0-9]\d{7}[A-Za-z]\b"), _dni_ok),  # Spanish DNI / NIE
    (
        "IP",
        re.compile(
            r"\b(?:\d{1,3}\.){3}\d{1,3}\b|(?<![\w:])(?:[0-9A-Fa-f]{1,4}:){2,7}[0-9A-Fa-f]{0,4}(?::[0-9A-Fa-f]{1,4}){0,5}(?![\w:])"
        ),
        _ip_ok,
    ),
    ("PHONE", re.compile(r"(?<![\w+])\+?\(?\d{1,4}\)?(?:[ .-]?\(?\d{1,4}\)?){2,6}(?!\w)"), _phone_ok),
]


# Cheap checks that every detector's match needs to pass: most prompts and answers
# contain nothing that could be PII and skip the ten detectors entirely.
# digit runs (cards, phones, national ids), dotted quads, digits before a letter (DNI);
# every branch starts with a digit, so the engine skips to digits (much faster than an
# alternation of branches with different first characters)
_MAYBE_DIGITS = re.compile(r"\d(?:[\d\s().+-]{6,}|\d{0,2}\.\d{1,3}\.\d{1,3}\.\d|\d{6}[A-Za-z])")
_MAYBE_IBAN = re.compile(r"[A-Z]{2}\d{2}")
_MAYBE_IPV6 = re.compile(r"[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{0,4}:")
# Where a keyword-led detector (SECRET, PRIVATE_KEY) can match: each of their starts,
# with the same word boundaries and the same case rules (the keyword branch is case-blind,
# and under IGNORECASE Python folds the four letters İ ı ſ K to ASCII, for the detector and
# this screen alike). Ordinary words that merely contain a keyword ("capital", "tokens",
# "secretary") are not a reason to run the detectors.
_KEYWORDS = re.compile(
    r"\b(?:AKIA|ASIA|sk-|gh[pousr]_|xox[abprs]-|AIza|eyJ)|PRIVATE KEY"
    r"|(?i:\b(?:api[_-]?key|secret|token|passw(?:or)?d)\b\s*[:=])"
)


# The same screen over ASCII bytes (no decoding): for ASCII the patterns mean the same,
# except that str's \s also matches \x1c-\x1f, spelt out here.
_MAYBE_DIGITS_B = re.compile(rb"\d(?:[\d\s\x1c-\x1f().+-]{6,}|\d{0,2}\.\d{1,3}\.\d{1,3}\.\d|\d{6}[A-Za-z])")
_MAYBE_IBAN_B = re.compile(_MAYBE_IBAN.pattern.encode())
_MAYBE_IPV6_B = re.compile(_MAYBE_IPV6.pattern.encode())
_KEYWORDS_B = re.compile(_KEYWORDS.pattern.replace(r"\s*", r"[\s\x1c-\x1f]*").encode())


def maybe_pii_utf8(raw: bytes) -> bool:
    """:func:`maybe_pii` of UTF-8 bytes (``UnicodeDecodeError`` when they are not)."""
    if not raw.isascii():
        return maybe_pii(raw.decode())
    if b"@" in raw or _MAYBE_DIGITS_B.search(raw) or _MAYBE_IBAN_B.search(raw):
        return True
    if b":" in raw and _MAYBE_IPV6_B.search(raw):
        return True
    return _KEYWORDS_B.search(raw) is not None


def maybe_pii(text: str) -> bool:
    """False only when no detector can find anything in ``text`` (a superset check:
    every detector's match contains something this looks for)."""
    if "@" in text or _MAYBE_DIGITS.search(text) or _MAYBE_IBAN.search(text):
        return True
    if ":" in text and _MAYBE_IPV6.search(text):
        return True
    return _KEYWORDS.search(text) is not None


def find_pii(text: str) -> list[Finding]:
    """Non-overlapping findings, earliest detector first."""
    if not maybe_pii(text):
        return []
    taken: list[tuple[int, int]] = []
    out: list[Finding] = []
    for kind, pattern, check in _DETECTORS:
        for m in pattern.finditer(text):
            s, e = m.span()
            if any(s < te and ts < e for ts, te in taken):
                continue
            if check is not None and not check(m.group()):
                continue
            taken.append((s, e))
            out.append(Finding(kind, s, e))
    return sorted(out, key=lambda f: f.start)


def scrub(text: str | None, policy: PiiPolicy, key: bytes = b"") -> Scrubbed:
    """Apply ``policy`` to ``text``; ``key`` is the HMAC key for ``hash`` mode."""
    if text is None:
        return Scrubbed(None)
    findings = find_pii(text)
    counts: dict[str, int] = {}
    for f in findings:
        counts[f.kind] = counts.get(f.kind, 0) + 1
    if not policy.store_text:
        return Scrubbed(None, counts, dropped=True)
    if not findings:
        return Scrubbed(text, counts)
    if policy.mode == "drop":
        return Scrubbed(None, counts, dropped=True)
    parts, pos = [], 0
    for f in findings:
        parts.append(text[pos : f.start])
        if policy.mode == "hash":
            if not key:
                raise ValueError("PII policy 'hash' needs an HMAC key (ARGUS_INGEST_PII__HMAC_KEY)")
            digest = hmac.new(key, text[f.start : f.end].encode(), hashlib.sha256).hexdigest()[:12]
            parts.append(f"[{f.kind}:{digest}]")
        else:
            parts.append(f"[{f.kind}]")
        pos = f.end
    parts.append(text[pos:])
    return Scrubbed("".join(parts), counts)
