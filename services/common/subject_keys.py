"""Where the subject key service is, and the two ClickHouse dictionaries that ask it.

The key service (``services.keys``) holds one data key per data subject; ClickHouse
seals and opens texts with them in SQL (migration ``0008_sealed_texts``). This module is
what the rest of Argus shares about it:

- :class:`KeyServiceRef`: its URL, tokens and the CA its certificate is checked against,
  from settings (``ARGUS_PRIVACY_KEYS_URL``, ``…_DICTIONARY_TOKEN_FILE``,
  ``…_ADMIN_TOKEN_FILE``, ``…_CA_FILE``) or, when none is set, the local stack's
  (``https://`` with the stack's CA, ``<home>/secrets/privacy/…``, written by ``argus
  stack up``). ClickHouse checks the same certificate through its ``<openSSL><client>``
  configuration (:func:`clickhouse_client_tls_config`).
- :func:`dictionary_ddl`: ``subject_keys`` (reads) is ``COMPLEX_KEY_DIRECT``: ClickHouse
  caches no key for reading, so a destroyed key is unreadable from the next query on,
  with no reload to wait for. ``subject_keys_ensure`` (inserts: creates keys) caches
  entries 5 to 10 s (``COMPLEX_KEY_CACHE``), so an insert block costs hash probes rather
  than a call; an erasure reloads it at once (a key destroyed some other way would seal
  at most those seconds of new rows with it: unreadable, never readable).
- :class:`KeyServiceClient`: the admin calls ``argus privacy`` makes.

The dictionaries' token sits in their DDL; only the admin can read DDL or call
``dictGet`` on them (:mod:`services.common.clickhouse_access`).
"""

from __future__ import annotations

import json
import re
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

# Columns ClickHouse stores sealed with the row's subject key (migration 0008): an insert
# gives the clear text to the EPHEMERAL ``<name>_in``, ClickHouse encrypts it into
# ``<name>_ct``, and the ALIAS ``<name>`` opens it while the key exists. ``user`` (and
# the dead letters' ``subject``) go in the same way and come out as the keyed pseudonym.
SEALED: dict[str, tuple[str, ...]] = {
    "inference_requests": ("user", "user_id", "prompt", "system_prompt", "metadata"),
    "inference_responses": ("user", "user_id", "output", "error_message"),
    "feedback": ("user", "user_id", "label", "comment"),
    "dead_letters": ("subject", "user", "original_key", "original_value"),
}
# texts stored in more than one sealed column: rows before migration 0016 hold the
# metadata values one by one (``metadata_ct``), later rows the whole map as one text
STORED_AS: dict[tuple[str, str], tuple[str, ...]] = {
    ("inference_requests", "metadata"): ("metadata_ct", "metadata_json_ct"),
}


def stored(table: str, text: str) -> tuple[str, ...]:
    """The columns that hold ``text`` of ``table`` sealed (``<text>_ct`` unless :data:`STORED_AS` says more)."""
    return STORED_AS.get((table, text), (f"{text}_ct",))


def sealed_columns(table: str) -> list[str]:
    """Every column of ``table`` that holds sealed texts, once each, in order."""
    return list(dict.fromkeys(name for c in texts(table) for name in stored(table, c)))


def texts(table: str) -> list[str]:
    """The sealed texts of ``table`` (its pseudonymised ``user``/``subject`` are not texts)."""
    return [c for c in SEALED[table] if c not in ("user", "subject")]


# what a role without text access may not name: the texts, clear or sealed
TEXT_COLUMNS = frozenset(name for table in SEALED for c in texts(table) for name in (c, f"{c}_in", *stored(table, c)))

ENSURE_DICTIONARY = "subject_keys_ensure"
ENSURE_CACHE_CELLS = 100_000
ENSURE_LIFETIME_S = (5, 10)
READ_DICTIONARY = "subject_keys"
KEY_DICTIONARIES = (ENSURE_DICTIONARY, READ_DICTIONARY)
_TOKEN = re.compile(r"[A-Za-z0-9_\-.~+/=]{16,512}")
_URL = re.compile(r"https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._\-/]*)?")


class KeyServiceError(RuntimeError):
    pass


class PrivacySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ARGUS_PRIVACY_", frozen=True, extra="ignore")

    keys_url: str | None = None
    keys_dictionary_token_file: Path | None = None
    keys_admin_token_file: Path | None = None
    keys_ca_file: Path | None = None  # the CA of an https:// key service's certificate (else the system's)


def _read(path: Path) -> SecretStr:
    try:
        text = Path(path).read_text().strip()
    except FileNotFoundError:
        raise KeyServiceError(
            f"{path} does not exist (run `argus stack up`, or mount the key service's secret)"
        ) from None
    if not _TOKEN.fullmatch(text):
        raise KeyServiceError(f"{path} does not hold a token (16 to 512 URL-safe characters)")
    return SecretStr(text)


@dataclass(frozen=True)
class KeyServiceRef:
    url: str
    dictionary_token: SecretStr
    admin_token: SecretStr | None = None
    ca_file: Path | None = None

    def __post_init__(self) -> None:
        if not _URL.fullmatch(self.url):
            raise KeyServiceError(f"the key service URL {self.url!r} is not an http(s) URL")

    def ssl_context(self) -> ssl.SSLContext | None:
        """How a client checks the key service's certificate (hostname included)."""
        if not self.url.startswith("https://"):
            return None
        return ssl.create_default_context(cafile=str(self.ca_file) if self.ca_file else None)

    @classmethod
    def local(cls, stack: Any = None) -> KeyServiceRef:
        """The local stack's key service (``argus stack up`` started it): HTTPS with a
        certificate from the stack's CA."""
        from services.common.settings import StackSettings

        s = stack or StackSettings()
        home = Path(s.home).resolve()
        secrets = home / "secrets" / "privacy"
        admin = secrets / "admin-token"
        return cls(
            f"https://{s.host}:{s.keys_port}",
            _read(secrets / "dictionary-token"),
            _read(admin) if admin.exists() else None,
            home / "tls" / "ca.pem",
        )

    @classmethod
    def from_settings(cls) -> KeyServiceRef:
        p = PrivacySettings()
        if p.keys_url is None:
            return cls.local()
        if p.keys_dictionary_token_file is None:
            raise KeyServiceError("ARGUS_PRIVACY_KEYS_URL is set without ARGUS_PRIVACY_KEYS_DICTIONARY_TOKEN_FILE")
        return cls(
            p.keys_url.rstrip("/"),
            _read(p.keys_dictionary_token_file),
            _read(p.keys_admin_token_file) if p.keys_admin_token_file else None,
            p.keys_ca_file,
        )


def dictionary_ddl(db: str, ref: KeyServiceRef) -> list[str]:
    """``CREATE OR REPLACE`` of both key dictionaries in ``db`` (run before every migration)."""
    token = ref.dictionary_token.get_secret_value()
    if not _TOKEN.fullmatch(token):
        raise KeyServiceError("the dictionary token holds characters a SQL literal cannot take")

    def source(path: str) -> str:
        return (
            f"SOURCE(HTTP(URL '{ref.url}{path}' FORMAT 'JSONEachRow' "
            f"HEADERS(HEADER(NAME 'Authorization' VALUE 'Bearer {token}'))))"
        )

    return [
        # inserts: cached a few seconds (a block's lookups cost a hash probe, not a call);
        # an erasure reloads it, and reads never use it
        f"CREATE OR REPLACE DICTIONARY {db}.{ENSURE_DICTIONARY} "
        "(tenant String, subject String, subject_id String, key String) PRIMARY KEY tenant, subject "
        f"{source('/v1/dictionary/ensure')} LAYOUT(COMPLEX_KEY_CACHE(SIZE_IN_CELLS {ENSURE_CACHE_CELLS})) "
        f"LIFETIME(MIN {ENSURE_LIFETIME_S[0]} MAX {ENSURE_LIFETIME_S[1]})",
        # a destroyed key reads as the zero key: AES-GCM's tag then fails and the text is NULL
        f"CREATE OR REPLACE DICTIONARY {db}.{READ_DICTIONARY} "
        f"(subject_id String, key String DEFAULT '{'0' * 64}') PRIMARY KEY subject_id "
        f"{source('/v1/dictionary/lookup')} LAYOUT(COMPLEX_KEY_DIRECT())",
    ]


class KeyServiceClient:
    """The admin API (``argus privacy``): resolve a subject, destroy its key."""

    def __init__(self, ref: KeyServiceRef, timeout_s: float = 10.0) -> None:
        if ref.admin_token is None:
            raise KeyServiceError("no admin token for the key service (ARGUS_PRIVACY_KEYS_ADMIN_TOKEN_FILE)")
        self.ref = ref
        self.timeout_s = timeout_s

    def _post(self, path: str, doc: dict[str, Any]) -> dict[str, Any]:
        req = urllib.request.Request(
            self.ref.url + path,
            data=json.dumps(doc).encode(),
            method="POST",
            headers={
                "Authorization": "Bearer " + self.ref.admin_token.get_secret_value(),  # type: ignore[union-attr]
                "Content-Type": "application/json",
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s, context=self.ref.ssl_context()) as r:  # noqa: S310 - URL validated above
                return json.loads(r.read())
        except urllib.error.HTTPError as exc:
            raise KeyServiceError(f"key service {path}: HTTP {exc.code}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise KeyServiceError(f"key service at {self.ref.url} unreachable: {exc}") from None

    def resolve(self, tenant: str, subject: str) -> dict[str, Any]:
        return self._post("/v1/subjects/resolve", {"tenant": tenant, "subject": subject})

    def status(self, subject_id: str) -> dict[str, Any]:
        return self._post("/v1/subjects/status", {"subject_id": subject_id})

    def destroy(self, tenant: str, subject: str) -> dict[str, Any]:
        return self._post("/v1/subjects/destroy", {"tenant": tenant, "subject": subject})


def clickhouse_client_tls_config(ca_file: Path) -> str:
    """The ClickHouse server configuration (a ``config.d`` file) with which its HTTP
    dictionary source checks the key service's certificate: against ``ca_file`` only (no
    system CAs), chain and host name, refusing what fails. Measured on the engine here:
    with it, a certificate from another CA and one for another host name are refused; a
    server without the key service's CA refuses the certificate too."""
    from xml.sax.saxutils import escape

    return (
        "<clickhouse>\n  <openSSL>\n    <client>\n"
        f"      <caConfig>{escape(str(Path(ca_file).resolve()))}</caConfig>\n"
        "      <loadDefaultCAFile>false</loadDefaultCAFile>\n"
        "      <verificationMode>strict</verificationMode>\n"
        "      <extendedVerification>true</extendedVerification>\n"
        "      <invalidCertificateHandler><name>RejectCertificateHandler</name></invalidCertificateHandler>\n"
        "    </client>\n  </openSSL>\n</clickhouse>\n"
    )


def bounded_subject(subject: str) -> str:
    """A subject id as ClickHouse asks the key service for it (migration 0008): itself up
    to 256 bytes, else ``sha256:`` and its hex digest."""
    import hashlib

    raw = subject.encode("utf-8", errors="surrogatepass")
    return subject if len(raw) <= 256 else "sha256:" + hashlib.sha256(raw).hexdigest()


def subject_of(user: str | None, request_id: str | None) -> str:
    """Whose data a row is: its user, else its request (``request:<uuid>``)."""
    if user is not None:
        return bounded_subject(user)
    if request_id is None:
        raise ValueError("a subject needs a user or a request id")
    return bounded_subject(f"request:{request_id}")
