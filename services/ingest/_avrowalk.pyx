# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""The passthrough walker of :mod:`services.ingest.avro_rows`, compiled.

The same contract as the straight-line Python that ``avro_rows._compile_walker``
generates from a schema: frame every field of a wire-format body, check what the full
path would check, return the raw text fields (in order) or ``None`` when the message must
take the full path. The PII screen of an ASCII text is
:func:`services.ingest.pii.maybe_pii_utf8` written out as one pass over the bytes; a
text with any other byte goes to ``screen`` (the Python screen) as before.

Every read is checked against the end of the body by hand: bounds checking is off.
The unit tests hold this walker and the Python one to the same answer on generated,
golden, corrupted and random bodies, and this screen to the regex screen.
"""
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.string cimport memcmp

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


cdef inline bint _in(unsigned char c, const char* chars) noexcept nogil:
    cdef Py_ssize_t j = 0
    while chars[j]:
        if c == <unsigned char>chars[j]:
            return True
        j += 1
    return False


cdef bint _keyword_at(const unsigned char* p, Py_ssize_t n, Py_ssize_t i) noexcept nogil:
    """The keyword screen at ``i``, where a word starts: ``(?:AKIA|ASIA|sk-|gh[pousr]_|
    xox[abprs]-|AIza|eyJ)`` as written, ``(?:api[_-]?key|secret|token|passw(?:or)?d)\\b\\s*[:=]``
    in any ASCII case."""
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
    elif c == 120:  # x
        if i + 4 < n and _exact_at(p, n, i, b"xox", 3) and _in(p[i + 3], b"abprs") and p[i + 4] == 45:
            return True
    elif c == 101:  # e
        if _exact_at(p, n, i, b"eyJ", 3):
            return True
    c = _lower(c)
    if c == 97:  # api[_-]?key
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
    elif c == 112:  # passw(?:or)?d
        if _word_at(p, n, i, b"passw", 5):
            if _word_at(p, n, i + 5, b"ord", 3) and _assigned(p, n, i + 8):
                return True
            if _word_at(p, n, i + 5, b"d", 1) and _assigned(p, n, i + 6):
                return True
    return False


cdef bint _ascii_maybe_pii(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    """``maybe_pii_utf8`` of ASCII bytes: '@'; a digit followed by six or more of
    ``[\\d\\s\\x1c-\\x1f().+-]`` (which also covers the dotted-quad and digits-then-letter
    branches); ``[A-Z]{2}\\d{2}``; ``[0-9A-Fa-f]{1,4}:[0-9A-Fa-f]{0,4}:``; ``PRIVATE KEY``;
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
        if c == 80 and _exact_at(p, n, i, b"PRIVATE KEY", 11):
            return True
        if _is_word(c) and (i == 0 or not _is_word(p[i - 1])) and _keyword_at(p, n, i):
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


cdef class Walker:
    """One schema's walker: ``program`` is ``avro_rows``' list of (kind, arg, role);
    ``screen(raw)`` is the Python PII screen for a text that is not ASCII (it raises
    ``UnicodeDecodeError`` for invalid UTF-8); ``stores_text(tenant)`` is ``None`` when
    every tenant stores text."""

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
            if not 0 <= kind <= K_ENUM or not 0 <= role <= R_TENANT or not 0 <= arg < 2**31:
                raise ValueError(f"field {i}: unknown kind or role {(kind, arg, role)}")
            self.kinds[i], self.args[i], self.roles[i] = kind, arg, role
        self.screen = screen
        self.stores_text = stores_text

    def __call__(self, bytes buf):
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(buf)
        cdef Py_ssize_t end = PyBytes_GET_SIZE(buf)
        cdef Py_ssize_t pos = 5, e
        cdef long long n
        cdef unsigned long long u64
        cdef int f, kind, role, shift
        cdef unsigned char b
        cdef list texts = []
        cdef bytes s
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
                # the length: a zigzag varint of at most 10 bytes
                u64 = 0
                shift = 0
                while True:
                    if pos >= end or shift > 63:
                        return None
                    b = p[pos]
                    pos += 1
                    if shift == 63 and b & 0x7E:  # beyond 64 bits: a length no body can hold
                        return None
                    u64 |= (<unsigned long long>(b & 0x7F)) << shift
                    if b < 0x80:
                        break
                    shift += 7
                n = <long long>(u64 >> 1) ^ -(<long long>(u64 & 1))
                if n < 0 or n > end - pos:
                    return None
                e = pos + <Py_ssize_t>n
                if role == R_TEXT:
                    s = buf[pos:e]
                    if _ascii(p + pos, e - pos):
                        if _ascii_maybe_pii(p + pos, e - pos):
                            return None
                    else:
                        try:
                            if self.screen(s):
                                return None
                        except UnicodeDecodeError:
                            return None
                    texts.append(s)
                elif not _ascii(p + pos, e - pos):
                    try:
                        buf[pos:e].decode()
                    except UnicodeDecodeError:
                        return None
                if role == R_TENANT and self.stores_text is not None:
                    if not self.stores_text(buf[pos:e]):
                        return None
                pos = e
            elif kind == K_ENUM:  # an index below 64 is one even byte
                if pos >= end:
                    return None
                b = p[pos]
                if b > 0x7F or b & 1 or (b >> 1) >= self.args[f]:
                    return None
                pos += 1
            elif kind == K_INT:
                if pos >= end:
                    return None
                if role == R_UNSIGNED and p[pos] & 1:  # zigzag: the sign is the lowest bit
                    return None
                while pos < end and p[pos] > 0x7F:
                    pos += 1
                if pos >= end:
                    return None
                pos += 1
            elif kind == K_DBL:
                pos += 8
            elif kind == K_FLT:
                pos += 4
            elif kind == K_BOOL:
                if pos >= end or p[pos] > 1:
                    return None
                pos += 1
            if pos > end:
                return None
        return texts if pos == end else None
