"""The outbox sender against a real SMTP server that is down, refuses, then works."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.parser import BytesParser
from email.policy import default as default_policy
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fixtures_mail import Inbox
from fixtures_service import FakeClock
from ports import free_port
from psycopg_pool import AsyncConnectionPool
from waiting import wait_until

from provisioner.db import outbox
from provisioner.mail import sender
from provisioner.mail.compose import Composer, MailView
from provisioner.settings import Smtp
from provisioner.workers import loop

SENDER = "provisioner@operator.example"


def smtp(port: int) -> Smtp:
    return Smtp(host="127.0.0.1", port=port, sender=SENDER, timeout_seconds=5)


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[AsyncConnectionPool]:
    pool = AsyncConnectionPool(db_url, min_size=1, max_size=2, open=False)
    await pool.open()
    yield pool
    await pool.close()


async def enqueue(pool: AsyncConnectionPool, n: int, now: datetime) -> None:
    async with pool.connection() as conn:
        for i in range(n):
            await outbox.enqueue(
                conn, message_id=f"<m{i}@test>", recipient=f"r{i}@example.com",
                subject=f"Subject {i}", body="Grüße\n", now=now,
            )  # fmt: skip


async def test_smtp_down_loses_nothing_and_sends_nothing_twice(
    pool: AsyncConnectionPool, inbox: Inbox, clock: FakeClock, db: psycopg.Connection[Any]
) -> None:
    await enqueue(pool, 3, clock())
    # 1. Nothing listens on this port: every attempt fails and is rescheduled.
    down = sender.SmtpTransport(smtp(free_port()))
    assert await sender.send_due(pool, down, SENDER, clock) == 3
    rows = db.execute("SELECT attempts, sent_at, last_error FROM mail_outbox").fetchall()
    assert all(r[0] == 1 and r[1] is None and "Connect" in r[2] for r in rows), rows
    # Not due again before the backoff.
    assert await sender.send_due(pool, down, SENDER, clock) == 0

    # 2. The server is up but refuses the first mail with a temporary error.
    up = sender.SmtpTransport(smtp(inbox.port))
    inbox.fail_next = 1
    clock.advance(seconds=6)
    assert await sender.send_due(pool, up, SENDER, clock) == 3
    assert len(inbox.messages) == 2
    clock.advance(seconds=11)
    assert await sender.send_due(pool, up, SENDER, clock) == 1
    assert sorted(m["Message-ID"] for m in inbox.messages) == [
        "<m0@test>",
        "<m1@test>",
        "<m2@test>",
    ]

    # 3. Everything is sent once; more passes send nothing.
    clock.advance(hours=2)
    assert await sender.send_due(pool, up, SENDER, clock) == 0
    assert len(inbox.messages) == 3
    assert db.execute("SELECT count(*) FROM mail_outbox WHERE sent_at IS NULL").fetchone() == (0,)
    assert inbox.messages[0].get_content().strip() == "Grüße"


async def test_two_senders_never_send_the_same_mail(
    pool: AsyncConnectionPool, inbox: Inbox, clock: FakeClock
) -> None:
    import asyncio

    await enqueue(pool, 20, clock())
    up = sender.SmtpTransport(smtp(inbox.port))
    other = AsyncConnectionPool(pool.conninfo, min_size=1, max_size=2, open=False)
    await other.open()
    try:
        counts = await asyncio.gather(
            sender.send_due(pool, up, SENDER, clock), sender.send_due(other, up, SENDER, clock)
        )
    finally:
        await other.close()
    assert sum(counts) == 20
    ids = [m["Message-ID"] for m in inbox.messages]
    assert len(ids) == len(set(ids)) == 20


async def test_without_smtp_mails_become_eml_files(
    pool: AsyncConnectionPool, tmp_path: Path, clock: FakeClock
) -> None:
    await enqueue(pool, 2, clock())
    files = sender.transport_for(Smtp(sender=SENDER, timeout_seconds=5), tmp_path)
    assert await sender.send_due(pool, files, SENDER, clock) == 2
    written = sorted((tmp_path / "mail").glob("*.eml"))
    assert [p.name for p in written] == ["m0_test.eml", "m1_test.eml"]
    assert b"Subject: Subject 0" in written[0].read_bytes()


def test_backoff_grows_and_is_capped() -> None:
    assert sender.backoff(0) == timedelta(seconds=5)
    assert sender.backoff(3) == timedelta(seconds=40)
    assert sender.backoff(50) == timedelta(hours=1)


@pytest.mark.parametrize("language", ["de", "en"])
@pytest.mark.parametrize("kind", ["confirm_request", "activated", "reset", "expired"])
def test_every_template_renders_and_has_one_line_subject(kind: str, language: str) -> None:
    view = MailView(
        recipient_name="Name\nBcc: evil@example.com", side="target", block_id="b",
        block_text="+49 89 123456 0-99", first_number="+49891234560",
        last_number="+498912345699", number_count=100, owner_name="Owner",
        owner_customer="K1", target_name="Target\r\nX-Evil: 1", target_customer="K2",
        expires_at=datetime(2026, 1, 1, tzinfo=UTC).isoformat(), confirm_url="http://x/confirm/t",
    )  # fmt: skip
    mail = Composer().compose(kind, language, view)
    assert "\n" not in mail.subject and "\r" not in mail.subject
    assert "+49 89 123456 0-99" in mail.subject + mail.body


async def test_a_worker_stopped_mid_conversation_finishes_it_and_sends_nothing_twice(
    pool: AsyncConnectionPool, inbox: Inbox, clock: FakeClock, db: psycopg.Connection[Any]
) -> None:
    """The service stops while the SMTP server is taking a mail's DATA: the mail sender
    finishes that conversation (within loop.STOP_GRACE) and marks the mail sent before
    it stops, so the next start does not send it again; no socket is left open (a
    ResourceWarning would fail the test)."""
    await enqueue(pool, 1, clock())
    inbox.delay = 1.0
    transport = sender.SmtpTransport(smtp(inbox.port))

    async def step() -> int:
        return await sender.send_due(pool, transport, SENDER, clock)

    worker = asyncio.create_task(loop.run("mail", step, idle_seconds=60))
    await wait_until(lambda: inbox.receiving > 0, "the mail never reached DATA", interval=0.01)
    worker.cancel()
    with pytest.raises(asyncio.CancelledError):
        await worker
    assert len(inbox.messages) == 1
    assert db.execute("SELECT count(*) FROM mail_outbox WHERE sent_at IS NULL").fetchone() == (0,)
    assert await sender.send_due(pool, transport, SENDER, clock) == 0


# A name as an attacker writes it: RFC 2047 encoded words that decode to CR LF, a header
# and a forged first body line. (The API refuses it now; a name stored before is still
# in the database, and a mail must be built safely from it whatever it holds.)
FORGED = (
    "Evil =?utf-8?q?=0D=0AReply-To:_evil@example.com=0D=0ABcc:_all@example.com"
    "=0D=0A=0D=0APlease_confirm_here:_http://evil.example/x?= GmbH"
)
EXPECTED_HEADERS = {
    "content-type", "mime-version", "content-transfer-encoding", "from", "to", "date",
    "message-id", "auto-submitted", "subject",
}  # fmt: skip


def hostile_mail() -> tuple[str, str]:
    view = MailView(
        recipient_name="Isar Logistik GmbH", side="owner", block_id="muc-main",
        block_text="+49 89 123456 0-99", first_number="+49891234560",
        last_number="+498912345699", number_count=100, owner_name="Isar Logistik GmbH",
        owner_customer="K200300", target_name=FORGED, target_customer="K100200",
        expires_at="2026-12-11", confirm_url="http://127.0.0.1:8080/confirm/" + "t" * 43,
    )  # fmt: skip
    mail = Composer().compose("confirm_request", "en", view)
    return mail.subject, mail.body


def assert_only_our_headers(raw: bytes) -> None:
    message = BytesParser(policy=default_policy).parsebytes(raw)
    names = list(message)  # a message iterates over its header names
    assert {k.lower() for k in names} == EXPECTED_HEADERS, names
    assert all(len(message.get_all(k, [])) == 1 for k in names)
    subject = str(message["Subject"])
    assert "\r" not in subject and "\n" not in subject and FORGED in subject, subject
    body = message.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert text.startswith("Hello Isar Logistik GmbH,"), text[:200]
    assert "Please confirm here: http://evil.example" not in text


@pytest.mark.parametrize("path", ["smtp", "file"])
async def test_a_name_with_encoded_words_adds_no_header_and_no_body_line(
    pool: AsyncConnectionPool, inbox: Inbox, tmp_path: Path, clock: FakeClock, path: str
) -> None:
    subject, body = hostile_mail()
    async with pool.connection() as conn:
        await outbox.enqueue(conn, message_id="<forged@test>", recipient="it@isar.example",
                             subject=subject, body=body, now=clock())  # fmt: skip
    transport = (
        sender.SmtpTransport(smtp(inbox.port))
        if path == "smtp"
        else sender.transport_for(Smtp(sender=SENDER, timeout_seconds=5), tmp_path)
    )
    assert await sender.send_due(pool, transport, SENDER, clock) == 1
    if path == "smtp":
        [received] = await inbox.wait_for(1)
        raw = received.as_bytes()
    else:
        raw = (tmp_path / "mail" / "forged_test.eml").read_bytes()
    assert_only_our_headers(raw)


def test_a_header_of_ours_that_is_not_one_line_builds_no_mail() -> None:
    mail = outbox.OutboxMail(
        id=1, message_id="<x@test>", recipient="a@b.example\r\nBcc: c@d.example",
        subject="s", body="b", created_at=datetime(2026, 1, 1, tzinfo=UTC), attempts=0,
        next_attempt_at=datetime(2026, 1, 1, tzinfo=UTC), sent_at=None, last_error=None,
    )  # fmt: skip
    with pytest.raises(ValueError, match="To"):
        sender.build_message(mail, SENDER)
