# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The passthrough walker of :mod:`services.ingest.avro_rows`, compiled.

The same contract as the straight-line Python that ``avro_rows._compile_walker``
generates from a schema: frame every field of a wire-format body, check what the full
path would check, return the raw text fields (in order) or ``None`` when the message must
take the full path. The PII screen of an ASCII text is
:func:`services.common.pii.maybe_pii_utf8` written out as one pass over the bytes; a
text with any other byte goes to ``screen`` (the Python screen) as before.

Every read is checked against the end of the body by hand: bounds checking is off.
The unit tests hold this walker and the Python one to the same answer on generated,
golden, corrupted and random bodies, and this screen to the regex screen.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memcmp, memcpy
from cpython.bytes cimport PyBytes_FromStringAndSize

# field kinds and roles: the numbering of avro_rows (_STR ... _ENUM; roles 0-4)
cdef enum:
    K_STR = 0
    K_NSTR = 1
    K_INT = 2
    K_NINT = 3
    K_DBL = 4
    K_NDBL = 5
    K_FLT = 6
    K_NFLT = 7
    K_BOOL = 8
    K_ENUM = 9
    K_ARR_REC = 10  # array of records of ``arg`` strings
    K_ARR_STR = 11  # array of strings
    K_MAP_STR = 12  # map of strings

cdef enum:
    R_PLAIN = 0
    R_TEXT = 1
    R_UUID = 2
    R_UNSIGNED = 3
    R_TENANT = 4

DEF MAX_FIELDS = 256


cdef inline bint _is_digit(unsigned char c) noexcept nogil:
    return 48 <= c <= 57


cdef inline bint _is_hex(unsigned char c) noexcept nogil:
    return (48 <= c <= 57) or (65 <= c <= 70) or (97 <= c <= 102)


cdef inline bint _in_digit_run(unsigned char c) noexcept nogil:
    # [\d\s\x1c-\x1f().+-] of the bytes screen (bytes \s is [ \t\n\r\f\v])
    return (48 <= c <= 57) or (9 <= c <= 13) or c == 32 or (0x1c <= c <= 0x1f) or c == 40 or c == 41 \
        or c == 46 or c == 43 or c == 45


cdef inline unsigned char _lower(unsigned char c) noexcept nogil:
    return c + 32 if 65 <= c <= 90 else c


cdef inline bint _word_at(const unsigned char* p, Py_ssize_t n, Py_ssize_t i, const char* w, Py_ssize_t k) noexcept nogil:
    """``w`` (lower case ASCII, ``k`` bytes) at ``i``, ignoring ASCII case."""
    cdef Py_ssize_t j
    if i + k > n:
        return False
    for j in range(k):
        if _lower(p[i + j]) != <unsigned char>w[j]:
            return False
    return True


cdef inline bint _exact_at(const unsigned char* p, Py_ssize_t n, Py_ssize_t i, const char* w, Py_ssize_t k) noexcept nogil:
    if i + k > n:
        return False
    return memcmp(p + i, w, k) == 0


cdef inline bint _is_word(unsigned char c) noexcept nogil:  # \w of ASCII
    return (48 <= c <= 57) or (65 <= c <= 90) or (97 <= c <= 122) or c == 95


cdef inline bint _is_space(unsigned char c) noexcept nogil:  # str's \s on ASCII
    return (9 <= c <= 13) or c == 32 or (0x1c <= c <= 0x1f)


cdef inline bint _assigned(const unsigned char* p, Py_ssize_t n, Py_ssize_t j) noexcept nogil:
    """``\\b\\s*[:=]`` at ``j`` (just after a keyword)."""
    if j >= n or _is_word(p[j]):
        return False
    while j < n and _is_space(p[j]):
        j += 1
    return j < n and (p[j] == 58 or p[j] == 61)


cdef inline bint _is_said(const unsigned char* p, Py_ssize_t n, Py_ssize_t j) noexcept nogil:
    """``\\s+is\\b`` at ``j`` (just after a keyword)."""
    cdef Py_ssize_t k = j
    while k < n and _is_space(p[k]):
        k += 1
    if k == j or not _word_at(p, n, k, b"is", 2):
        return False
    return k + 2 >= n or not _is_word(p[k + 2])


cdef inline bint _is_alpha(unsigned char c) noexcept nogil:
    return (65 <= c <= 90) or (97 <= c <= 122)


cdef inline bint _iban_at(const unsigned char* p, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    """``[A-Za-z]{2}\\d{2}[ -]?[A-Za-z0-9]{4}`` at ``i`` (where a word starts)."""
    cdef Py_ssize_t j, k
    if i + 8 > n or not (_is_alpha(p[i]) and _is_alpha(p[i + 1]) and _is_digit(p[i + 2]) and _is_digit(p[i + 3])):
        return False
    j = i + 4
    if p[j] == 32 or p[j] == 45:
        j += 1
    if j + 4 > n:
        return False
    for k in range(j, j + 4):
        if not (_is_alpha(p[k]) or _is_digit(p[k])):
            return False
    return True


cdef inline bint _in(unsigned char c, const char* chars) noexcept nogil:
    cdef Py_ssize_t j = 0
    while chars[j]:
        if c == <unsigned char>chars[j]:
            return True
        j += 1
    return False


cdef bint _keyword_at(const unsigned char* p, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    """The keyword screen at ``i``, where a word starts: ``(?:AKIA|ASIA|sk-|gh[pousr]_|
    github_pat_|hooks.slack.com/|xox[abprs]-|AIza|eyJ)`` as written;
    ``(?:api[_-]?key|secret|token|passw(?:or)?d|aws_secret(_access)?_key)\\b\\s*[:=]``,
    ``bearer[ \\t]`` and ``passw(?:or)?d\\s+is\\b`` in any ASCII case."""
    cdef unsigned char c = p[i]
    if c == 65:  # A
        if _exact_at(p, n, i, b"AKIA", 4) or _exact_at(p, n, i, b"ASIA", 4) or _exact_at(p, n, i, b"AIza", 4):
            return True
    elif c == 115:  # s
        if _exact_at(p, n, i, b"sk-", 3):
            return True
    elif c == 103:  # g
        if i + 3 < n and p[i + 1] == 104 and _in(p[i + 2], b"pousr") and p[i + 3] == 95:
            return True
        if _exact_at(p, n, i, b"github_pat_", 11):
            return True
    elif c == 104:  # h
        if _exact_at(p, n, i, b"hooks.slack.com/", 16):
            return True
    elif c == 120:  # x
        if i + 4 < n and _exact_at(p, n, i, b"xox", 3) and _in(p[i + 3], b"abprs") and p[i + 4] == 45:
            return True
    elif c == 101:  # e
        if _exact_at(p, n, i, b"eyJ", 3):
            return True
    c = _lower(c)
    if c == 97:  # api[_-]?key, aws_secret(_access)?_key
        if _word_at(p, n, i, b"aws_secret_access_key", 21) and _assigned(p, n, i + 21):
            return True
        if _word_at(p, n, i, b"aws_secret_key", 14) and _assigned(p, n, i + 14):
            return True
        if _word_at(p, n, i, b"api", 3):
            if _word_at(p, n, i + 3, b"key", 3) and _assigned(p, n, i + 6):
                return True
            if i + 3 < n and (p[i + 3] == 95 or p[i + 3] == 45) and _word_at(p, n, i + 4, b"key", 3) \
                    and _assigned(p, n, i + 7):
                return True
    elif c == 115:  # secret
        if _word_at(p, n, i, b"secret", 6) and _assigned(p, n, i + 6):
            return True
    elif c == 116:  # token
        if _word_at(p, n, i, b"token", 5) and _assigned(p, n, i + 5):
            return True
    elif c == 112:  # passw(?:or)?d, then [:=] or "is"
        if _word_at(p, n, i, b"passw", 5):
            if _word_at(p, n, i + 5, b"ord", 3) and (_assigned(p, n, i + 8) or _is_said(p, n, i + 8)):
                return True
            if _word_at(p, n, i + 5, b"d", 1) and (_assigned(p, n, i + 6) or _is_said(p, n, i + 6)):
                return True
    elif c == 98:  # bearer[ \t]
        if _word_at(p, n, i, b"bearer", 6) and i + 6 < n and (p[i + 6] == 32 or p[i + 6] == 9):
            return True
    return False


cdef bint _ascii_maybe_pii(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """``maybe_pii_utf8`` of ASCII bytes: '@'; a digit followed by six or more of
    ``[\\d\\s\\x1c-\\x1f().+-]`` (which also covers the dotted-quad and digits-then-letter
    branches); ``[A-Z]{2}\\d{2}``, or ``[A-Za-z]{2}\\d{2}[ -]?[A-Za-z0-9]{4}`` where a word
    starts; ``[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{0,4}:``; ``::`` then a hex digit;
    ``PRIVATE KEY``;
    a keyword where a word starts."""
    cdef Py_ssize_t i, j, h, first_digit = -1
    cdef unsigned char c
    for i in range(n):
        c = p[i]
        if c == 64:  # '@'
            return True
        if _in_digit_run(c):
            if first_digit < 0 and _is_digit(c):
                first_digit = i
            if first_digit >= 0 and i - first_digit >= 6:
                return True
        else:
            first_digit = -1
        if 65 <= c <= 90 and i + 3 < n and 65 <= p[i + 1] <= 90 and _is_digit(p[i + 2]) and _is_digit(p[i + 3]):
            return True
        if c == 58 and i > 0 and _is_hex(p[i - 1]):  # ':' after a hex digit: up to four more, then ':'
            h = 0
            j = i + 1
            while j < n and h < 4 and _is_hex(p[j]):
                j += 1
                h += 1
            if j < n and p[j] == 58:
                return True
        if c == 58 and i + 2 < n and p[i + 1] == 58 and _is_hex(p[i + 2]):  # '::' then a hex digit
            return True
        if c == 80 and _exact_at(p, n, i, b"PRIVATE KEY", 11):
            return True
        if _is_word(c) and (i == 0 or not _is_word(p[i - 1])) and (_keyword_at(p, n, i) or _iban_at(p, n, i)):
            return True
    return False


def ascii_maybe_pii(bytes raw):
    """The compiled screen of ASCII bytes (for tests; ``ValueError`` on other bytes)."""
    cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(raw)
    cdef Py_ssize_t n = PyBytes_GET_SIZE(raw)
    if not raw.isascii():
        raise ValueError("not ASCII")
    return _ascii_maybe_pii(p, n)


cdef inline bint _ascii(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if p[i] > 0x7F:
            return False
    return True


cdef inline bint _uuid_at(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end) noexcept nogil:
    """A canonical UUID string as Avro writes it: length 36 (zigzag 72, 'H'), then
    8-4-4-4-12 hex digits."""
    cdef Py_ssize_t i
    cdef unsigned char c
    if pos + 37 > end or p[pos] != 72:
        return False
    for i in range(36):
        c = p[pos + 1 + i]
        if i == 8 or i == 13 or i == 18 or i == 23:
            if c != 45:
                return False
        elif not _is_hex(c):
            return False
    return True


cdef inline Py_ssize_t _varint(const unsigned char* p, Py_ssize_t pos, Py_ssize_t end, long long* out) noexcept nogil:
    """A zigzag varint of at most 10 bytes at ``pos``: its value in ``out``, the next
    position returned, or -1 (cut short, longer than 10 bytes or beyond 64 bits)."""
    cdef unsigned long long u64 = 0
    cdef int shift = 0
    cdef unsigned char b
    while True:
        if pos >= end or shift > 63:
            return -1
        b = p[pos]
        pos += 1
        if shift == 63 and b & 0x7E:
            return -1
        u64 |= (<unsigned long long>(b & 0x7F)) << shift
        if b < 0x80:
            break
        shift += 7
    out[0] = <long long>(u64 >> 1) ^ -(<long long>(u64 & 1))
    return pos


cdef class Walker:
    """One schema's walker: ``program`` is ``avro_rows``' list of (kind, arg, role);
    ``screen(raw)`` is the Python PII screen for a text that is not ASCII (it raises
    ``UnicodeDecodeError`` for invalid UTF-8); ``stores_text(tenant)`` is ``None`` when
    every tenant stores text.

    Texts returned: a text field's raw bytes (``None`` for null), screened here; for an
    array of records with the text role, every string of every record in order, not
    screened (the caller screens what it assembles from them); a map with the text role
    has its values screened and returns nothing."""

    cdef int n
    cdef int kinds[MAX_FIELDS]
    cdef int args[MAX_FIELDS]
    cdef int roles[MAX_FIELDS]
    cdef object screen
    cdef object stores_text

    def __init__(self, program, screen, stores_text=None):
        if len(program) > MAX_FIELDS:
            raise ValueError(f"more than {MAX_FIELDS} fields")
        self.n = len(program)
        for i, (kind, arg, role) in enumerate(program):
            if not 0 <= kind <= K_MAP_STR or not 0 <= role <= R_TENANT or not 0 <= arg < 2**31:
                raise ValueError(f"field {i}: unknown kind or role {(kind, arg, role)}")
            self.kinds[i], self.args[i], self.roles[i] = kind, arg, role
        self.screen = screen
        self.stores_text = stores_text

    cdef Py_ssize_t _string(self, bytes buf, const unsigned char* p, Py_ssize_t pos, Py_ssize_t end,
                            bint screen, Py_ssize_t* start):
        """A string at ``pos``: valid UTF-8 and, with ``screen``, clean; its first byte in
        ``start``; the next position, or -1."""
        cdef long long n
        cdef Py_ssize_t e
        pos = _varint(p, pos, end, &n)
        if pos < 0 or n < 0 or n > end - pos:
            return -1
        e = pos + <Py_ssize_t>n
        start[0] = pos
        if _ascii(p + pos, e - pos):
            if screen and _ascii_maybe_pii(p + pos, e - pos):
                return -1
        elif screen:
            try:
                if self.screen(buf[pos:e]):
                    return -1
            except UnicodeDecodeError:
                return -1
        else:
            try:
                buf[pos:e].decode()
            except UnicodeDecodeError:
                return -1
        return e

    cdef Py_ssize_t _collection(self, bytes buf, const unsigned char* p, Py_ssize_t pos, Py_ssize_t end,
                                int kind, int arg, int role, list texts):
        """An array or map: blocks of (count, items), a negative count followed by the
        block's size in bytes, until a count of 0. The next position, or -1."""
        cdef long long count, size
        cdef long long i
        cdef int j
        cdef Py_ssize_t start
        while True:
            pos = _varint(p, pos, end, &count)
            if pos < 0:
                return -1
            if count == 0:
                return pos
            if count < 0:
                count = -count
                pos = _varint(p, pos, end, &size)
                if pos < 0 or size < 0:
                    return -1
            if count > end - pos:  # every item takes at least one byte
                return -1
            for i in range(count):
                if kind == K_ARR_REC:
                    for j in range(arg):
                        pos = self._string(buf, p, pos, end, False, &start)
                        if pos < 0:
                            return -1
                        if role == R_TEXT:
                            texts.append(buf[start:pos])
                elif kind == K_ARR_STR:
                    pos = self._string(buf, p, pos, end, False, &start)
                    if pos < 0:
                        return -1
                else:  # map: a key, then its value (both screened when the map is text)
                    pos = self._string(buf, p, pos, end, role == R_TEXT, &start)
                    if pos < 0:
                        return -1
                    pos = self._string(buf, p, pos, end, role == R_TEXT, &start)
                    if pos < 0:
                        return -1

    def __call__(self, bytes buf):
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(buf)
        cdef Py_ssize_t end = PyBytes_GET_SIZE(buf)
        cdef Py_ssize_t pos = 5, start
        cdef long long v
        cdef int f, kind, role
        cdef unsigned char b
        cdef list texts = []
        for f in range(self.n):
            kind = self.kinds[f]
            role = self.roles[f]
            if kind == K_NSTR or kind == K_NINT or kind == K_NDBL or kind == K_NFLT:
                if pos >= end:
                    return None
                b = p[pos]
                pos += 1
                if b == 0:  # null
                    if role == R_TEXT:
                        texts.append(None)
                    continue
                if b != 2:
                    return None
                kind -= 1
            if kind == K_STR and role == R_UUID:
                if not _uuid_at(p, pos, end):
                    return None
                pos += 37
            elif kind == K_STR:
                pos = self._string(buf, p, pos, end, role == R_TEXT, &start)
                if pos < 0:
                    return None
                if role == R_TEXT:
                    texts.append(buf[start:pos])
                elif role == R_TENANT and self.stores_text is not None:
                    if not self.stores_text(buf[start:pos]):
                        return None
            elif kind == K_ENUM:  # an index below 64 is one even byte
                if pos >= end:
                    return None
                b = p[pos]
                if b > 0x7F or b & 1 or (b >> 1) >= self.args[f]:
                    return None
                pos += 1
            elif kind == K_INT:  # in the range of an int (arg 32) or a long (64); unsigned: not negative
                pos = _varint(p, pos, end, &v)
                if pos < 0 or (role == R_UNSIGNED and v < 0):
                    return None
                if self.args[f] == 32 and not -2147483648 <= v <= 2147483647:
                    return None
            elif kind == K_DBL:
                pos += 8
            elif kind == K_FLT:
                pos += 4
            elif kind == K_BOOL:
                if pos >= end or p[pos] > 1:
                    return None
                pos += 1
            else:
                pos = self._collection(buf, p, pos, end, kind, self.args[f], role, texts)
                if pos < 0:
                    return None
            if pos > end:
                return None
        return texts if pos == end else None


cdef inline Py_ssize_t _put_long(unsigned char* out, long long v) noexcept nogil:
    """Avro's zigzag varint of ``v`` at ``out``; the number of bytes written."""
    cdef unsigned long long u = (<unsigned long long>v << 1) ^ <unsigned long long>(v >> 63)
    cdef Py_ssize_t k = 0
    while u >= 0x80:
        out[k] = <unsigned char>((u & 0x7F) | 0x80)
        u >>= 7
        k += 1
    out[k] = <unsigned char>u
    return k + 1


cdef inline Py_ssize_t _long_size(long long v) noexcept nogil:
    cdef unsigned char scratch[10]
    return _put_long(scratch, v)


cdef inline long long _utf8_chars(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """Characters in valid UTF-8: every byte but continuation bytes starts one."""
    cdef Py_ssize_t i
    cdef long long chars = 0
    for i in range(n):
        if (p[i] & 0xC0) != 0x80:
            chars += 1
    return chars


cdef bint _screened(const unsigned char* p, Py_ssize_t n, object screen) except -1:
    if _ascii(p, n):
        return _ascii_maybe_pii(p, n)
    return bool(screen((<const char*>p)[:n]))


def request_columns(list texts, screen):
    """``avro_rows.request_rows``' derived columns, compiled: from the role and content of
    every message (``texts``, valid UTF-8 as the walker returns them), the encodings of
    ``prompt`` (non-system messages as ``role: content`` joined by blank lines),
    ``system_prompt`` (system contents joined by newlines; null when that is empty),
    ``message_count``, ``prompt_chars`` and an empty ``pii_counts``; ``None`` when the
    screen finds a possible PII in the prompt or the system prompt. ``screen`` screens a
    text that is not ASCII. The Python ``derived`` of ``request_rows`` is the reference."""
    cdef Py_ssize_t k = len(texts), i, convo_len = 0, sys_len = 0, size, at, n
    cdef Py_ssize_t nconvo = 0, nsys = 0
    cdef bytes role, content, out
    cdef unsigned char* o
    cdef Py_ssize_t convo_at, sys_at
    if k & 1:
        raise ValueError("texts hold role, content pairs")
    for i in range(0, k, 2):
        if type(texts[i]) is not bytes or type(texts[i + 1]) is not bytes:
            raise TypeError("texts hold bytes")
        role = <bytes>texts[i]
        content = <bytes>texts[i + 1]
        if role == b"system":
            sys_len += len(content) + (1 if nsys else 0)
            nsys += 1
        else:
            convo_len += len(role) + 2 + len(content) + (2 if nconvo else 0)
            nconvo += 1
    size = 1 + _long_size(convo_len) + convo_len + (1 + _long_size(sys_len) + sys_len if sys_len else 1) \
        + _long_size(k >> 1) + 10 + 1
    out = PyBytes_FromStringAndSize(NULL, size)
    o = <unsigned char*>PyBytes_AS_STRING(out)
    o[0] = 2
    at = 1 + _put_long(o + 1, convo_len)
    convo_at = at
    if sys_len:
        sys_at = convo_at + convo_len + 1 + _long_size(sys_len)
    nconvo = nsys = 0
    for i in range(0, k, 2):
        role = <bytes>texts[i]
        content = <bytes>texts[i + 1]
        if role == b"system":
            if nsys:
                o[sys_at] = 10
                sys_at += 1
            n = len(content)
            memcpy(o + sys_at, PyBytes_AS_STRING(content), n)
            sys_at += n
            nsys += 1
        else:
            if nconvo:
                o[at] = 10
                o[at + 1] = 10
                at += 2
            n = len(role)
            memcpy(o + at, PyBytes_AS_STRING(role), n)
            at += n
            o[at] = 58  # ':'
            o[at + 1] = 32
            at += 2
            n = len(content)
            memcpy(o + at, PyBytes_AS_STRING(content), n)
            at += n
            nconvo += 1
    if _screened(o + convo_at, convo_len, screen):
        return None
    if sys_len:
        o[at] = 2
        at += 1 + _put_long(o + at + 1, sys_len)
        if _screened(o + at, sys_len, screen):
            return None
        at += sys_len
    else:
        o[at] = 0
        at += 1
    at += _put_long(o + at, k >> 1)
    at += _put_long(o + at, _utf8_chars(o + convo_at, convo_len))
    o[at] = 0
    at += 1
    return out[:at]
