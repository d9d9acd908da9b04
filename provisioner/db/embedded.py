"""The embedded PostgreSQL (pgserver) used when no database URL is configured."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def start(folder: Path, *, stop_at_exit: bool = True) -> tuple[str, Any]:
    """Start (or join) a private PostgreSQL in `folder`; return its URL and the server handle.

    pgserver keeps one server per folder and reference-counts users in this process,
    so calling this twice for the same folder is cheap and safe.
    """
    try:
        import pgserver
    except ImportError:
        raise RuntimeError(
            "no database.url is set and the embedded PostgreSQL is not installed: set"
            " database.url, or install provisioner[embedded] (pgserver)"
        ) from None

    folder.mkdir(parents=True, exist_ok=True)
    # PostgreSQL's Unix socket path must fit in 107 bytes; pgserver puts it in the folder.
    if len(str(folder / ".s.PGSQL.5432")) > 100:
        raise RuntimeError(
            f"data folder path too long for PostgreSQL's socket ({folder}); "
            "choose a shorter data_dir or set database.url"
        )
    cleanup = "stop" if stop_at_exit else None
    server = pgserver.get_server(folder, cleanup_mode=cleanup)  # type: ignore[attr-defined]
    url = str(server.get_uri())
    log.info("embedded PostgreSQL in %s", folder)
    return url, server
