"""Structured JSON logging with structlog. Bind ``topic``, ``partition`` and ``offset``
once per message (``log.bind(...)``) so every line about it carries them."""

from __future__ import annotations

import logging as _stdlib_logging
import sys

import structlog


def configure_logging(level: str = "INFO", json: bool = True) -> None:
    lvl = getattr(_stdlib_logging, level.upper(), _stdlib_logging.INFO)
    _stdlib_logging.basicConfig(stream=sys.stderr, level=lvl, format="%(message)s")
    renderer = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(lvl),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str, **bound: object) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name).bind(logger=name, **bound)
