"""Entry point: ``python -m services.keys`` (the local stack starts it with ``argus stack up``)."""

from __future__ import annotations

import sys

from aiohttp import web

from services.common.logging import configure_logging, get_logger
from services.keys.server import make_app
from services.keys.settings import KeyServiceSettings
from services.keys.store import KeyStore


def init_secrets(settings: KeyServiceSettings) -> None:
    """Create the master key and the two tokens where the settings name them, each once
    (``O_EXCL``, mode 0600): a container's first start; never a default value."""
    import os
    import secrets

    for path in (settings.master_key_file, settings.dictionary_token_file, settings.admin_token_file):
        if path is None or path.exists():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))


def main(argv: list[str] | None = None) -> int:
    settings = KeyServiceSettings()
    if (argv if argv is not None else sys.argv[1:]) == ["--init-secrets"]:
        init_secrets(settings)
        return 0
    configure_logging(settings.log_level, settings.log_json)
    log = get_logger("keys")
    try:
        master, dictionary_token, admin_token = settings.secrets()
        tls = settings.ssl_context()
    except ValueError as exc:
        print(f"argus keys service: {exc}", file=sys.stderr)
        return 2
    store = KeyStore(settings.store, master)
    log.info(
        "key service starting",
        host=settings.host,
        port=settings.port,
        https=tls is not None,
        store=str(settings.store),
        keys=store.count(),
    )
    web.run_app(
        make_app(store, dictionary_token, admin_token, settings.max_body_bytes),
        host=settings.host,
        port=settings.port,
        ssl_context=tls,
        print=None,
        access_log=None,
    )
    store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
