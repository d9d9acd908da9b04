"""Opening the connection pool: fail fast on a bad URL, log it without its password."""

from __future__ import annotations

import logging
import re

from psycopg_pool import AsyncConnectionPool

log = logging.getLogger(__name__)


def masked(url: str) -> str:
    """The URL with any password replaced, for logs."""
    url = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
    return re.sub(r"(password=)[^\s&]*", r"\1***", url)


# No statement runs longer, and no transaction idles longer, than this: a stuck client
# or worker cannot hold rows or a connection for long. The mail sender holds its mail's
# row during one SMTP attempt (smtp.timeout_seconds), well below the idle limit.
STATEMENT_TIMEOUT_MS = 30_000
IDLE_IN_TRANSACTION_MS = 120_000
# A request waits this long for a free connection, then gets 503 with Retry-After.
CHECKOUT_TIMEOUT_S = 10.0


async def open_pool(url: str, *, max_size: int = 10) -> AsyncConnectionPool:
    # check: a connection is tested when handed out, so after a database restart the pool
    # replaces its dead connections instead of failing one request per connection.
    pool = AsyncConnectionPool(
        url,
        min_size=1,
        max_size=max_size,
        open=False,
        check=AsyncConnectionPool.check_connection,
        timeout=CHECKOUT_TIMEOUT_S,
        kwargs={
            "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}"
            f" -c idle_in_transaction_session_timeout={IDLE_IN_TRANSACTION_MS}"
        },
    )
    await pool.open(wait=True, timeout=30)
    try:
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
            encoding = conn.info.parameter_status("server_encoding")
        if encoding != "UTF8":
            # SQL_ASCII hands text back as bytes and stores whatever it is given; LATIN1
            # and friends refuse names and mails in other scripts. Neither is ours.
            raise DatabaseUnfit(
                f"the database's encoding is {encoding}, not UTF8: create it with"
                " ENCODING 'UTF8' (createdb -E UTF8 -T template0)"
            )
    except BaseException:
        await pool.close()
        raise
    log.info("database pool open on %s", masked(url))
    return pool


class DatabaseUnfit(Exception):
    """The database can be reached but the service cannot run on it."""
