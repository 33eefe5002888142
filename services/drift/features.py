"""Features per event (pure functions of one decoded record).

Requests (per model): prompt length in characters and words, the script and a language
guess of the last user message, the tenant. Responses (per model and version): output
tokens, latency, time to first token, confidence (mean token logprob), error, empty or
refusal answers, finish reason. Feedback: negative judgement.

Numeric features feed river detectors and windowed tests, categorical ones chi-squared
tests, binary ones Bernoulli-rate detectors.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

REFUSAL = re.compile(r"\b(I can(?:no|')t|I am unable|I'm unable|I won't|as an AI)\b", re.I)
_STOPWORDS = {
    "en": {"the", "is", "what", "how", "a", "of", "and", "to", "in", "my", "for", "does", "do", "can"},
    "fr": {"le", "la", "les", "est", "quelle", "quel", "de", "des", "un", "une", "et", "combien", "pour"},
    "es": {"el", "la", "los", "es", "cuál", "cual", "de", "una", "un", "y", "qué", "que", "para"},
    "de": {"der", "die", "das", "ist", "was", "wie", "ein", "eine", "und", "hat", "von", "viele"},
}


@dataclass(frozen=True)
class Features:
    stream: str  # detector key: "model|version" (responses, feedback) or "model|*" (requests)
    numeric: dict[str, float] = field(default_factory=dict)
    categorical: dict[str, str] = field(default_factory=dict)
    binary: dict[str, bool] = field(default_factory=dict)
    request_id: str = ""


_ASCII_LETTER = re.compile(r"[A-Za-z]")


@lru_cache(maxsize=8192)
def _script_of_char(ch: str) -> str:
    name = unicodedata.name(ch, "")
    return (
        "latin"
        if "LATIN" in name
        else "cyrillic"
        if "CYRILLIC" in name
        else "cjk"
        if "CJK" in name or "HIRAGANA" in name or "KATAKANA" in name or "HANGUL" in name
        else "arabic"
        if "ARABIC" in name
        else "other"
    )


def script_of(text: str) -> str:
    """The dominant script of the letters in ``text`` (most prompts are ASCII: a fast path)."""
    if text.isascii():
        return "latin" if _ASCII_LETTER.search(text) else "none"
    counts: dict[str, int] = {}
    for ch in text:
        if ch.isalpha():
            s = _script_of_char(ch)
            counts[s] = counts.get(s, 0) + 1
    return max(counts, key=counts.get) if counts else "none"


_WORD_LANGS: dict[str, tuple[str, ...]] = {}
for _lang, _words in _STOPWORDS.items():
    for _w in _words:
        _WORD_LANGS[_w] = _WORD_LANGS.get(_w, ()) + (_lang,)


def language_of(text: str) -> str:
    scores = dict.fromkeys(_STOPWORDS, 0)
    for w in re.findall(r"[^\W\d_]+", text.lower()):
        for lang in _WORD_LANGS.get(w, ()):
            scores[lang] += 1
    best = max(scores, key=scores.get)
    return best if scores[best] > 0 else "other"


def request_features(v: dict[str, Any]) -> Features:
    user = [m["content"] for m in v["messages"] if m["role"] == "user"]
    last = user[-1] if user else ""
    return Features(
        stream=f"{v['model']}|*",
        numeric={"prompt_chars": float(len(last)), "prompt_words": float(len(last.split()))},
        categorical={"prompt_script": script_of(last), "prompt_language": language_of(last), "tenant": v["tenant"]},
        request_id=str(v["request_id"]),
    )


def response_features(v: dict[str, Any]) -> Features | None:
    if v.get("shadow"):
        return None  # shadow answers are compared offline, not monitored as live traffic
    out = v.get("output") or ""
    numeric = {"output_tokens": float(v["output_tokens"]), "latency_ms": float(v["latency_ms"])}
    if v.get("time_to_first_token_ms") is not None:
        numeric["ttft_ms"] = float(v["time_to_first_token_ms"])
    if v.get("mean_logprob") is not None:
        numeric["confidence"] = float(v["mean_logprob"])
    return Features(
        stream=f"{v['model']}|{v['model_version']}",
        numeric=numeric,
        categorical={"finish_reason": v.get("finish_reason") or "none"},
        binary={
            "error": v["status"] != "ok",
            "empty_output": v["status"] == "ok" and not out.strip(),
            "refusal": bool(REFUSAL.search(out)),
        },
        request_id=str(v["request_id"]),
    )


def feedback_features(v: dict[str, Any], model: str = "*", version: str = "*") -> Features | None:
    if v["kind"] not in ("thumbs", "rating") or v.get("score") is None:
        return None
    negative = v["score"] == 0 if v["kind"] == "thumbs" else v["score"] <= 2
    return Features(
        stream=f"{model}|{version}", binary={"negative_feedback": negative}, request_id=str(v["request_id"])
    )


class FeedbackAttribution:
    """Feedback judged against the model and version that answered: responses are
    remembered by request_id (the last ``size``), feedback looks its response up. Feedback
    whose response is not known (older than the window, or not seen by this worker) is
    counted in ``misses`` and yields nothing: a ``*|*`` stream could not say which model
    got worse.
    """

    def __init__(self, size: int = 200_000) -> None:
        from services.common.lru import RecentMap

        self.models = RecentMap(size)  # request_id -> (model, version)
        self.misses = 0

    def remember(self, response: dict[str, Any]) -> None:
        if not response.get("shadow"):
            self.models.put(str(response["request_id"]), (response["model"], response["model_version"]))

    def features(self, feedback: dict[str, Any]) -> Features | None:
        answered = self.models.get(str(feedback["request_id"]))
        if answered is None:
            if feedback["kind"] in ("thumbs", "rating") and feedback.get("score") is not None:
                self.misses += 1
            return None
        return feedback_features(feedback, *answered)
