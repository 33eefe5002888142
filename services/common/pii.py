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

import bisect
import hashlib
import hmac
import ipaddress
import re
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal

from pydantic import BaseModel, ConfigDict

Mode = Literal["redact", "hash", "drop"]


class PiiPolicy(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    mode: Mode = "redact"
    store_text: bool = True
    # the user id is personal data: stored only as its keyed pseudonym (``user``) unless the
    # tenant keeps it, and then sealed with the subject key like a text (``user_id``)
    keep_user: bool = False


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
    s = re.sub(r"[\s-]+", "", raw).upper()
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


_ISO_DATE = re.compile(r"\d{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12]\d|3[01])")


def _phone_ok(raw: str) -> bool:
    digits = re.sub(r"\D", "", raw)
    if not 8 <= len(digits) <= 15:
        return False
    if _ISO_DATE.fullmatch(raw):
        return False  # 2024-11-28 is a date
    # a bare run of digits (an order number, an id) is a phone only from 10 digits on
    # ("4155550132", "0612345678"); written with "+", spaces, dots, dashes or parentheses,
    # from 8 on ("+44 20 7946 0958", "06 12 34 56 78")
    return len(digits) >= 10 or raw != digits


# Every detector runs in time linear in the text: quantifiers are bounded (or the
# pattern cannot backtrack into them), and the two whose natural pattern is quadratic
# on adversarial input (an e-mail's local part scanned from every start; a PEM block
# searched from every BEGIN) are anchored on their marker instead. ``find_pii`` also
# keeps a time budget per text: past it the text counts as unscreened (see ``scrub``).
Span = tuple[int, int]
Finder = Callable[[str], Iterable[Span]]

MAX_LOCAL = 64  # RFC 5321 limits
MAX_PEM = 16_384  # an RSA-8192 private key in PEM is about 6.5 KB


def _regex(pattern: re.Pattern[str], check: Callable[[str], bool] | None = None) -> Finder:
    def find(text: str) -> Iterable[Span]:
        for m in pattern.finditer(text):
            if check is None or check(m.group()):
                yield m.span()

    return find


_AT = re.compile("[@\uff20]")  # '@' and the full-width '＠'
_DOMAIN = re.compile(r"(?:[\w-]{1,63}\.){1,10}[^\W\d_]{2,63}(?!\w)")  # IDN labels too


def _emails(text: str) -> Iterable[Span]:
    """Anchored on each '@': the local part is walked back at most 64 characters, the
    domain matched forward with bounded labels, so work per '@' is bounded."""
    for m in _AT.finditer(text):
        at = m.start()
        start, floor = at, max(0, at - MAX_LOCAL)
        while start > floor and (text[start - 1].isalnum() or text[start - 1] in "._%+-"):
            start -= 1
        while start < at and not text[start].isalnum():
            start += 1  # a local part starts with a letter or digit (the old \b)
        if start == at:
            continue
        d = _DOMAIN.match(text, at + 1)
        if d is not None:
            yield start, d.end()


_PEM_BEGIN = re.compile(r"-----BEGIN [A-Z ]{0,40}PRIVATE KEY-----")
_PEM_END = re.compile(r"-----END [A-Z ]{0,40}PRIVATE KEY-----")


def _private_keys(text: str) -> Iterable[Span]:
    r"""Each BEGIN paired with the first END after it (within MAX_PEM): two linear
    scans and a bisection, where ``BEGIN[\s\S]*?END`` rescans from every BEGIN."""
    if "PRIVATE KEY" not in text:
        return
    ends = [m.span() for m in _PEM_END.finditer(text)]
    starts = [e[0] for e in ends]
    after = 0
    for b in _PEM_BEGIN.finditer(text):
        if b.start() < after:
            continue
        i = bisect.bisect_left(starts, b.end())
        if i < len(ends) and ends[i][1] - b.start() <= MAX_PEM:
            after = ends[i][1]
            yield b.start(), after


# Order matters: earlier detectors claim their spans first (a card is not also a phone).
_DETECTORS: list[tuple[str, Finder]] = [
    ("PRIVATE_KEY", _private_keys),
    (
        "SECRET",
        _regex(
            re.compile(
                r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"  # AWS access key id
                r"|\bsk-(?:proj-|live-|test-)?[A-Za-z0-9_-]{20,}"  # OpenAI / Stripe style
                r"|\bgh[pousr]_[A-Za-z0-9]{36,}\b"  # GitHub tokens
                r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"  # Slack tokens
                r"|\bAIza[0-9A-Za-z_-]{35}\b"  # Google API keys
                r"|\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWT
                r"|(?i:\b(?:api[_-]?key|secret|token|passw(?:or)?d)\b[ \t]{0,8}[:=][ \t]{0,8})[^\s'\"]{8,}"
                r"|\bgithub_pat_[A-Za-z0-9_]{22,255}"  # GitHub fine-grained tokens
                r"|\bhooks\.slack\.com/services/[A-Za-z0-9/_-]{20,200}"  # Slack incoming webhooks
                r"|(?i:\baws_secret(?:_access)?_key\b[ \t]{0,8}[:=][ \t]{0,8})[A-Za-z0-9/+=]{40}"  # AWS secret keys
                r"|(?i:\bbearer[ \t]{1,4})[A-Za-z0-9._~+/=-]{16,}"  # opaque bearer tokens
                r"|(?i:\bmy[ \t]{1,4}passw(?:or)?d[ \t]{1,4}is[ \t]{1,4})[^\s]{4,}"  # "my password is ..."
            )
        ),
    ),
    ("EMAIL", _emails),
    (  # upper or lower case, grouped by spaces or dashes
        "IBAN",
        _regex(re.compile(r"\b[A-Za-z]{2}\d{2}(?:[ -]?[A-Za-z0-9]{4}){2,7}(?:[ -]?[A-Za-z0-9]{1,4})?\b"), _iban_ok),
    ),
    ("CARD", _regex(re.compile(r"\b\d(?:[ .-]?\d){12,18}\b"), lambda s: _luhn(re.sub(r"\D", "", s)))),
    ("SSN", _regex(re.compile(r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"))),
    (
        "NATIONAL_ID",
        _regex(
            re.compile(
                r"\b[A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z] ?\d{2} ?\d{2} ?\d{2} ?[A-D]\b"  # UK NINO
                r"|\b[12] ?\d{2} ?(?:0[1-9]|1[0-2]) ?(?:\d{2}|2[AB]) ?\d{3} ?\d{3} ?\d{2}\b"  # French NIR
            )
        ),
    ),
    ("NATIONAL_ID", _regex(re.compile(r"\b[XYZ0-9]\d{7}[A-Za-z]\b"), _dni_ok)),  # Spanish DNI / NIE
    (
        "IP",
        _regex(
            re.compile(
                r"\b(?:\d{1,3}\.){3}\d{1,3}\b"
                # v6, compressed forms and v4-mapped tails included; ipaddress validates
                r"|(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:|:)(?:[0-9A-Fa-f]{0,4}:){1,7}[0-9A-Fa-f.]{0,15}(?![\w:])"
            ),
            _ip_ok,
        ),
    ),
    (
        "PHONE",
        _regex(re.compile(r"(?<![\w+])\+?\(?\d{1,4}\)?(?:[ .-]?\(?\d{1,4}\)?){2,6}(?!\w)"), _phone_ok),
    ),
]


# Cheap checks that every detector's match needs to pass: most prompts and answers
# contain nothing that could be PII and skip the ten detectors entirely.
# digit runs (cards, phones, national ids), dotted quads, digits before a letter (DNI);
# every branch starts with a digit, so the engine skips to digits (much faster than an
# alternation of branches with different first characters)
_MAYBE_DIGITS = re.compile(r"\d(?:[\d\s().+-]{6,}|\d{0,2}\.\d{1,3}\.\d{1,3}\.\d|\d{6}[A-Za-z])")
_MAYBE_IBAN = re.compile(r"[A-Z]{2}\d{2}|\b[A-Za-z]{2}\d{2}[ -]?[A-Za-z0-9]{4}")
_MAYBE_IPV6 = re.compile(r"[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{0,4}:|::[0-9A-Fa-f]")
# Where a keyword-led detector (SECRET, PRIVATE_KEY) can match: each of their starts,
# with the same word boundaries and the same case rules (the keyword branch is case-blind,
# and under IGNORECASE Python folds the four letters İ ı ſ K to ASCII, for the detector and
# this screen alike). Ordinary words that merely contain a keyword ("capital", "tokens",
# "secretary") are not a reason to run the detectors.
_KEYWORDS = re.compile(
    r"\b(?:AKIA|ASIA|sk-|gh[pousr]_|github_pat_|hooks\.slack\.com/|xox[abprs]-|AIza|eyJ)|PRIVATE KEY"
    r"|(?i:\b(?:api[_-]?key|secret|token|passw(?:or)?d|aws_secret_access_key|aws_secret_key)\b\s*[:=])"
    r"|(?i:\bbearer[ \t])|(?i:\bpassw(?:or)?d\s+is\b)"
)


# The same screen over ASCII bytes (no decoding): for ASCII the patterns mean the same,
# except that str's \s also matches \x1c-\x1f, spelt out here.
_MAYBE_DIGITS_B = re.compile(rb"\d(?:[\d\s\x1c-\x1f().+-]{6,}|\d{0,2}\.\d{1,3}\.\d{1,3}\.\d|\d{6}[A-Za-z])")
_MAYBE_IBAN_B = re.compile(_MAYBE_IBAN.pattern.encode())
_MAYBE_IPV6_B = re.compile(_MAYBE_IPV6.pattern.encode())
_KEYWORDS_B = re.compile(
    _KEYWORDS.pattern.replace(r"\s*", r"[\s\x1c-\x1f]*").replace(r"\s+", r"[\s\x1c-\x1f]+").encode()
)


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
    if "@" in text or "\uff20" in text or _MAYBE_DIGITS.search(text) or _MAYBE_IBAN.search(text):
        return True
    if ":" in text and _MAYBE_IPV6.search(text):
        return True
    return _KEYWORDS.search(text) is not None


class ScreenTimeout(Exception):
    """The text took longer than its time budget to screen."""


def find_pii(text: str, budget_s: float | None = None) -> list[Finding]:
    """Non-overlapping findings, earliest detector first. With ``budget_s``, raises
    :class:`ScreenTimeout` once screening has taken longer (checked between detectors
    and every 256 candidates)."""
    if not maybe_pii(text):
        return []
    deadline = None if budget_s is None else time.monotonic() + budget_s
    starts: list[int] = []  # the claimed spans, disjoint, sorted by start
    ends: list[int] = []
    out: list[Finding] = []
    for kind, finder in _DETECTORS:
        for n, (s, e) in enumerate(finder(text)):
            if deadline is not None and n % 256 == 255 and time.monotonic() > deadline:
                raise ScreenTimeout(kind)
            i = bisect.bisect_left(starts, s)
            if (i > 0 and ends[i - 1] > s) or (i < len(starts) and starts[i] < e):
                continue  # overlaps a span an earlier detector claimed
            starts.insert(i, s)
            ends.insert(i, e)
            out.append(Finding(kind, s, e))
        if deadline is not None and time.monotonic() > deadline:
            raise ScreenTimeout(kind)
    return sorted(out, key=lambda f: f.start)


UNSCREENED = "UNSCREENED"


def scrub(text: str | None, policy: PiiPolicy, key: bytes = b"", budget_s: float | None = None) -> Scrubbed:
    """Apply ``policy`` to ``text``; ``key`` is the HMAC key for ``hash`` mode. A text
    that takes longer than ``budget_s`` to screen is treated as personal data as a
    whole: stored as ``[UNSCREENED]`` (dropped under ``drop``), counted as kind
    ``UNSCREENED``, never in clear."""
    if text is None:
        return Scrubbed(None)
    try:
        findings = find_pii(text, budget_s)
    except ScreenTimeout:
        if not policy.store_text or policy.mode == "drop":
            return Scrubbed(None, {UNSCREENED: 1}, dropped=True)
        return Scrubbed(f"[{UNSCREENED}]", {UNSCREENED: 1})
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
