"""Structured JSON logging with structlog. Bind ``topic``, ``partition`` and ``offset``
once per message (``log.bind(...)``) so every line about it carries them.

Secrets never reach a log line: :class:`Redactor` replaces every registered secret value
(the settings' ``SecretStr`` fields and password files, registered at start-up) and
anything shaped like a credential (a JAAS ``password="…"``, a DSN's ``user:password@``,
``sasl_plain_password=…``) with ``**********``, in structlog events and in the standard
library's records (aiokafka, faust) alike. Personal data neither: :class:`PiiScreen`
applies the PII detectors to structlog events (library records carry no message text)."""

from __future__ import annotations

import logging as _stdlib_logging
import re
import sys
from typing import Any

import structlog

from services.common.pii import PiiPolicy, maybe_pii, scrub

MASK = "**********"
_SHAPES = [
    (re.compile(r'(password\s*=\s*")[^"]*(")', re.I), r"\1" + MASK + r"\2"),  # JAAS
    (
        re.compile(r"((?:sasl_plain_password|password|secret|token|api_key)['\"]?\s*[:=]\s*['\"]?)[^'\"\s,}]+", re.I),
        r"\1" + MASK,
    ),
    (re.compile(r"(://[^/:@\s]+:)[^@/\s]+(@)"), r"\1" + MASK + r"\2"),  # scheme://user:password@host
]


def map_strings(value: Any, fn: Any) -> Any:
    """``value`` with ``fn`` applied to every string in it (dicts, lists and tuples walked)."""
    if isinstance(value, str):
        return fn(value)
    if isinstance(value, dict):
        return {k: map_strings(v, fn) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(map_strings(v, fn) for v in value)
    return value


class Redactor:
    """Masks registered secret values and credential-shaped text."""

    def __init__(self) -> None:
        self._values: set[str] = set()

    def register(self, *values: str | None) -> None:
        self._values |= {v for v in values if v and len(v) >= 4}

    def text(self, value: str) -> str:
        for secret in sorted(self._values, key=len, reverse=True):
            if secret in value:
                value = value.replace(secret, MASK)
        for pattern, repl in _SHAPES:
            value = pattern.sub(repl, value)
        return value

    def value(self, value: Any) -> Any:
        return map_strings(value, self.text)

    def __call__(self, _logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        return {k: self.value(v) for k, v in event.items()}


# Fields that name things (streams, topics, detectors) or carry numbers that are not about
# a person (offsets, positions, durations): not screened for personal data, so a broker
# address or an offset does not become [PHONE]/[IP] in the line an operator reads.
PII_SAFE_KEYS = frozenset(
    {
        "event", "logger", "level", "timestamp", "topic", "partition", "offset", "stream", "feature",
        "detector", "service", "group", "consumer_group", "error_type", "bootstrap", "statistic",
        "position", "bytes", "limit", "attempt", "backoff_s", "app_id", "table", "rows", "status",
    }
)  # fmt: skip


_LOG_POLICY = PiiPolicy()  # redact


class PiiScreen:
    """A structlog processor that applies the PII detectors to every other string field
    (nested ones too): a decode error, a reason or a value a service logs never carries
    an e-mail, a card or a key in clear. Each value has a small time budget; past it the
    value is logged as ``[UNSCREENED]``."""

    def __init__(self, budget_s: float = 0.05) -> None:
        self.budget_s = budget_s

    def text(self, value: str) -> str:
        return scrub(value, _LOG_POLICY, budget_s=self.budget_s).text or "" if maybe_pii(value) else value

    def value(self, value: Any) -> Any:
        return map_strings(value, self.text)

    def __call__(self, _logger: Any, _method: str, event: dict[str, Any]) -> dict[str, Any]:
        return {k: v if k in PII_SAFE_KEYS else self.value(v) for k, v in event.items()}


class _RecordFilter(_stdlib_logging.Filter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: _stdlib_logging.LogRecord) -> bool:
        record.msg = self.redactor.text(record.getMessage())
        record.args = None
        return True


REDACTOR = Redactor()


def register_secrets(settings: Any) -> None:
    """Register every secret a settings object holds (``SecretStr`` fields, nested, and
    the contents of ``*_file`` password files) with the log redactor."""
    from pydantic import BaseModel, SecretStr

    def walk(obj: Any) -> None:
        if isinstance(obj, SecretStr):
            REDACTOR.register(obj.get_secret_value())
            from urllib.parse import urlsplit

            try:  # a DSN: its password alone, too
                REDACTOR.register(urlsplit(obj.get_secret_value()).password)
            except ValueError:
                pass
        elif isinstance(obj, BaseModel):
            for name in type(obj).model_fields:
                value = getattr(obj, name)
                if name.endswith("password_file") and value:
                    try:
                        from pathlib import Path

                        REDACTOR.register(Path(value).read_text().strip())
                    except OSError:
                        pass
                walk(value)
        elif isinstance(obj, dict):
            for v in obj.values():
                walk(v)
        elif isinstance(obj, (list, tuple)):
            for v in obj:
                walk(v)

    walk(settings)


def configure_logging(level: str = "INFO", json: bool = True) -> None:
    lvl = getattr(_stdlib_logging, level.upper(), _stdlib_logging.INFO)
    _stdlib_logging.basicConfig(stream=sys.stderr, level=lvl, format="%(message)s")
    for handler in _stdlib_logging.getLogger().handlers:
        if not any(isinstance(f, _RecordFilter) for f in handler.filters):
            handler.addFilter(_RecordFilter(REDACTOR))
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            REDACTOR,  # last before rendering: tracebacks and exception text included
            PiiScreen(),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str, **bound: object) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name).bind(logger=name, **bound)
