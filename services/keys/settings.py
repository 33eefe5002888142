"""Settings of the key service (``ARGUS_KEYS_…``): where it listens, its store, and the
three secrets it needs, each from a file (a Kubernetes Secret, or what ``argus stack
up`` generated). None has a default value: the service refuses to start without them."""

from __future__ import annotations

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
