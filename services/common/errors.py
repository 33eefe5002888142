"""Error descriptions that never carry message text.

A decode or mapping error's ``repr`` can hold the value that failed: a
``UnicodeDecodeError`` holds the whole byte string it was decoding (a prompt), a
``ValueError`` from a parser often quotes the offending input. Such text would reach a
dead-letter reason, a Kafka header and the logs in clear, past the PII screen.
:func:`describe` keeps what an operator needs (the exception type, the position, the
reason) and elides every quoted value.

    >>> describe(UnicodeDecodeError("utf-8", b"\\xffjo@x.io", 0, 1, "invalid start byte"))
    "UnicodeDecodeError: 'utf-8' cannot decode byte 0 of 8: invalid start byte"
    >>> describe(ValueError("bad value 'jo@x.io'"))
    "ValueError: bad value '…'"
"""

from __future__ import annotations

import re

MAX_REASON = 300
# quoted values ('...', "...", b'...') and long unquoted runs of text-like characters
_QUOTED = re.compile(r"""b?'(?:[^'\\]|\\.){0,2000}'|b?"(?:[^"\\]|\\.){0,2000}\"""")


def describe(exc: BaseException) -> str:
    """``Type: message`` with quoted values replaced by ``'…'``, at most 300 characters."""
    if isinstance(exc, UnicodeDecodeError):
        return f"UnicodeDecodeError: {exc.encoding!r} cannot decode byte {exc.start} of {len(exc.object)}: {exc.reason}"
    if isinstance(exc, UnicodeEncodeError):
        return f"UnicodeEncodeError: {exc.encoding!r} cannot encode character {exc.start}: {exc.reason}"
    text = _QUOTED.sub("'…'", str(exc))
    out = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return out if len(out) <= MAX_REASON else out[: MAX_REASON - 1] + "…"
