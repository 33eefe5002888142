"""Label sets, fingerprints and matchers with Alertmanager's semantics.

- A fingerprint is the FNV-1a 64-bit hash of the sorted label names and values with a
  0xff separator, as Prometheus' ``model.LabelSet.Fingerprint`` computes it, printed as
  16 hex digits: the same labels give the same fingerprint in Argus and in Prometheus.
- Matchers use Alertmanager's syntax: ``name="value"``, ``name!="value"``,
  ``name=~"regex"``, ``name!~"regex"`` (regexes are anchored, as in Alertmanager).
  A label that is absent matches as the empty string.

Example::

    >>> m = Matcher.parse('severity=~"critical|page"')
    >>> m.matches({"severity": "page"}), m.matches({})
    (True, False)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Mapping

_FNV_OFFSET = 14695981039346656037
_FNV_PRIME = 1099511628211
_SEP = 0xFF


def fingerprint(labels: Mapping[str, str]) -> str:
    h = _FNV_OFFSET
    for name in sorted(labels):
        for part in (name.encode(), bytes([_SEP]), str(labels[name]).encode(), bytes([_SEP])):
            for b in part:
                h ^= b
                h = (h * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def format_labels(labels: Mapping[str, str]) -> str:
    """``{a="1", b="2"}``: the form Alertmanager uses in group keys."""
    return "{" + ", ".join(f'{k}="{labels[k]}"' for k in sorted(labels)) + "}"


_MATCHER = re.compile(
    r"""^\s*(?P<name>[A-Za-z_][A-Za-z0-9_]*)\s*(?P<op>=~|!~|!=|=)\s*(?P<value>"(?:[^"\\]|\\.)*"|[^"'\s=~!][^"'\s]*|)\s*$"""
)


class MatcherError(ValueError):
    pass


@dataclass(frozen=True)
class Matcher:
    name: str
    op: str  # = != =~ !~
    value: str

    @classmethod
    def parse(cls, text: str) -> "Matcher":
        m = _MATCHER.match(text)
        if not m:
            raise MatcherError(f'bad matcher {text!r}: expected name="value", name!="value", name=~"re" or name!~"re"')
        value = m["value"]
        if value.startswith('"'):
            value = bytes(value[1:-1], "utf-8").decode("unicode_escape")
        matcher = cls(m["name"], m["op"], value)
        if matcher.op in ("=~", "!~"):
            try:
                re.compile(value)
            except re.error as exc:
                raise MatcherError(f"bad regex in matcher {text!r}: {exc}") from exc
        return matcher

    def matches(self, labels: Mapping[str, str]) -> bool:
        v = labels.get(self.name, "")
        if self.op == "=":
            return v == self.value
        if self.op == "!=":
            return v != self.value
        hit = _anchored(self.value).fullmatch(v) is not None
        return hit if self.op == "=~" else not hit

    def __str__(self) -> str:
        return f'{self.name}{self.op}"{self.value}"'


_RE_CACHE: dict[str, re.Pattern[str]] = {}


def _anchored(pattern: str) -> re.Pattern[str]:
    if pattern not in _RE_CACHE:
        _RE_CACHE[pattern] = re.compile(pattern)
    return _RE_CACHE[pattern]


def matches_all(matchers: tuple[Matcher, ...] | list[Matcher], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)
