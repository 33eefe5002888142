"""Settings of the key service (``ARGUS_KEYS_…``): where it listens, its store, the
three secrets it needs, each from a file (a Kubernetes Secret, or what ``argus stack
up`` generated), and its TLS certificate. None of the secrets has a default value: the
service refuses to start without them, and refuses to listen beyond loopback without
TLS (the dictionaries' token and every key would cross the network in clear) unless
``ARGUS_KEYS_ALLOW_PLAINTEXT`` says so."""

from __future__ import annotations

import ipaddress
import ssl
from pathlib import Path

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


def read_secret(path: Path, what: str) -> SecretStr:
    try:
        text = Path(path).read_text().strip()
    except FileNotFoundError:
        raise ValueError(f"{what}: {path} does not exist") from None
    if len(text) < 16:
        raise ValueError(f"{what}: {path} holds fewer than 16 characters")
    return SecretStr(text)


class KeyServiceSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ARGUS_KEYS_", frozen=True, env_nested_delimiter="__", extra="ignore")

    host: str = "127.0.0.1"
    port: int = 8129
    store: Path = Path(".argus/keys/subject-keys.sqlite3")
    master_key_file: Path | None = None
    dictionary_token_file: Path | None = None  # ClickHouse's (the dictionaries' HTTP source)
    admin_token_file: Path | None = None  # `argus privacy …`'s
    # HTTPS: a PEM file with the certificate chain (and the private key, unless
    # tls_key_file names it: a kubernetes.io/tls Secret's tls.crt and tls.key)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    allow_plaintext: bool = False  # plain HTTP on a non-loopback address (behind a TLS proxy or mesh)
    max_body_bytes: int = 64 * 1024 * 1024
    log_level: str = "INFO"
    log_json: bool = True

    def secrets(self) -> tuple[bytes, SecretStr, SecretStr]:
        """(master key, dictionary token, admin token); a missing one is an error."""
        missing = [
            n
            for n, v in (
                ("ARGUS_KEYS_MASTER_KEY_FILE", self.master_key_file),
                ("ARGUS_KEYS_DICTIONARY_TOKEN_FILE", self.dictionary_token_file),
                ("ARGUS_KEYS_ADMIN_TOKEN_FILE", self.admin_token_file),
            )
            if v is None
        ]
        if missing:
            raise ValueError(f"the key service needs {', '.join(missing)}")
        master = read_secret(self.master_key_file, "master key").get_secret_value().encode()
        dictionary = read_secret(self.dictionary_token_file, "dictionary token")
        admin = read_secret(self.admin_token_file, "admin token")
        if dictionary.get_secret_value() == admin.get_secret_value():
            raise ValueError("the dictionary token and the admin token must differ")
        return master, dictionary, admin

    def ssl_context(self) -> ssl.SSLContext | None:
        """The server's TLS context (TLS 1.2+), or None for plain HTTP, which only a
        loopback address gets unless ``allow_plaintext`` is set."""
        if self.tls_cert_file is None:
            if self.tls_key_file is not None:
                raise ValueError("ARGUS_KEYS_TLS_KEY_FILE is set without ARGUS_KEYS_TLS_CERT_FILE")
            if not _loopback(self.host) and not self.allow_plaintext:
                raise ValueError(
                    f"refusing to serve keys in clear on {self.host}: set ARGUS_KEYS_TLS_CERT_FILE "
                    "(or ARGUS_KEYS_ALLOW_PLAINTEXT=true behind a TLS proxy)"
                )
            return None
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        try:
            ctx.load_cert_chain(str(self.tls_cert_file), str(self.tls_key_file) if self.tls_key_file else None)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"TLS certificate {self.tls_cert_file}: {exc.__class__.__name__}") from None
        return ctx


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
