"""Delivering the outbox: over SMTP, or as .eml files when no SMTP server is configured.

Each mail is locked (FOR UPDATE SKIP LOCKED) in its own transaction while it is
delivered and marked sent in that same transaction, so several instances never send
the same mail, and a failed attempt is retried later with backoff. A crash in the
instant between the server's acceptance and our commit is the one window in which a
mail can go out again; it then carries the same Message-ID, so mail systems can drop
the duplicate.
"""

from __future__ import annotations

import logging
import os
import re
from datetime import timedelta
from email.charset import Charset
from email.header import Header
from email.message import Message
from email.mime.text import MIMEText
from email.utils import format_datetime, formataddr, parseaddr
from pathlib import Path
from typing import Protocol

import aiosmtplib
from psycopg_pool import AsyncConnectionPool

from provisioner.clock import Clock
from provisioner.db import outbox
from provisioner.db.outbox import OutboxMail
from provisioner.domain.rules import ENCODED_WORD
from provisioner.metrics import MAILS
from provisioner.settings import Smtp

log = logging.getLogger(__name__)

MAX_BACKOFF = timedelta(hours=1)
_PLAIN_HEADER = re.compile(r"[\x20-\x7e]{1,998}")


class Transport(Protocol):
    async def deliver(self, message: Message) -> str:
        """Hand the message on; return where it went (for the log). Raise on failure."""


# The body as UTF-8 text on the wire (8bit), readable in an .eml file as it is.
# (typeshed declares these attributes and arguments narrower than the email package
# takes them: None is "no encoding", a Charset and a Header are accepted as values.)
_UTF8 = Charset("utf-8")
_UTF8.body_encoding = None  # type: ignore[assignment]


def build_message(mail: OutboxMail, sender: str) -> Message:
    """The mail, built so that no value can add a header or a body line.

    Python's modern header classes (email.policy.default) decode RFC 2047 encoded words
    found in a value they are given and fold the decoded text back in: a customer's name
    holding `=?utf-8?q?=0D=0AReply-To:...?=` became a real header and a forged first
    body line. So the text of the subject, which carries names, goes in as an
    `email.header.Header`, which encodes it (quoted-printable or base64 words of the
    literal text, never parsed) unless it is plain ASCII without an encoded-word start;
    the other headers are ours or checked addresses, and must be one line of printable
    ASCII or the mail is not built."""
    message = MIMEText(mail.body, "plain", _UTF8)  # type: ignore[arg-type]
    for name, value in (
        ("From", formataddr(parseaddr(sender), charset="utf-8")),
        ("To", mail.recipient),
        ("Date", format_datetime(mail.created_at)),
        ("Message-ID", mail.message_id),
        ("Auto-Submitted", "auto-generated"),
    ):
        if not _PLAIN_HEADER.fullmatch(value):
            raise ValueError(f"header {name} must be one line of printable ASCII")
        message[name] = value
    subject = " ".join(mail.subject.split())
    if _PLAIN_HEADER.fullmatch(subject) and ENCODED_WORD not in subject:
        message["Subject"] = subject  # read as it is: compat32 parses nothing
    else:
        encoded = Header(subject, _UTF8, header_name="Subject")
        message["Subject"] = encoded  # type: ignore[assignment]
    return message


class SmtpTransport:
    def __init__(self, smtp: Smtp) -> None:
        self._smtp = smtp

    async def deliver(self, message: Message) -> str:
        await aiosmtplib.send(
            message,
            hostname=self._smtp.host,
            port=self._smtp.port,
            username=self._smtp.username or None,
            password=self._smtp.password.value or None,
            start_tls=self._smtp.starttls,
            timeout=self._smtp.timeout_seconds,
        )
        return f"smtp://{self._smtp.host}:{self._smtp.port}"


class FileTransport:
    """The embedded default: each mail becomes an .eml file an operator can open."""

    def __init__(self, folder: Path) -> None:
        self._folder = folder

    async def deliver(self, message: Message) -> str:
        self._folder.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9.-]", "_", str(message["Message-ID"]).strip("<>"))
        path = self._folder / f"{name}.eml"
        temp = path.with_suffix(".tmp")
        temp.write_bytes(bytes(message))
        os.replace(temp, path)
        return str(path)


def transport_for(smtp: Smtp, data_dir: Path) -> Transport:
    if smtp.host:
        return SmtpTransport(smtp)
    return FileTransport(data_dir / "mail")


def backoff(attempts: int) -> timedelta:
    """5 s, 10 s, 20 s, ... up to an hour between attempts."""
    return min(timedelta(seconds=5 * 2 ** min(attempts, 20)), MAX_BACKOFF)


async def send_due(
    pool: AsyncConnectionPool, transport: Transport, sender: str, clock: Clock, limit: int = 50
) -> int:
    """Deliver up to `limit` due mails; return how many were attempted."""
    attempted = 0
    while attempted < limit:
        async with pool.connection() as conn, conn.transaction():
            mail = await outbox.claim_next(conn, clock())
            if mail is None:
                return attempted
            attempted += 1
            try:
                where = await transport.deliver(build_message(mail, sender))
            # ValueError: a mail that cannot be built (a header that is not one line); it
            # waits with backoff like a failed one, and the others go on.
            except (aiosmtplib.SMTPException, OSError, TimeoutError, ValueError) as exc:
                retry_at = clock() + backoff(mail.attempts)
                await outbox.mark_failed(conn, mail.id, f"{type(exc).__name__}: {exc}", retry_at)
                MAILS.labels(result="failed").inc()
                log.warning(
                    "mail %s to %s failed (attempt %d), retry at %s: %s",
                    mail.message_id,
                    mail.recipient,
                    mail.attempts + 1,
                    retry_at,
                    exc,
                )
                continue
            await outbox.mark_sent(conn, mail.id, clock())
            MAILS.labels(result="sent").inc()
            log.info("mail %s to %s delivered: %s", mail.message_id, mail.recipient, where)
    return attempted
