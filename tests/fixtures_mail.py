"""A real SMTP server (aiosmtpd) per test, and reading what it received."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default as default_policy
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from ports import free_port
from waiting import wait_until


class Inbox:
    """What a real SMTP server (aiosmtpd) received."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.messages: list[EmailMessage] = []
        self.fail_next = 0
        self.delay = 0.0  # seconds each DATA takes, as a slow server's would
        self.receiving = 0  # DATA commands under way

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.receiving += 1
        try:
            await asyncio.sleep(self.delay)
            return self._accept(envelope)
        finally:
            self.receiving -= 1

    def _accept(self, envelope: Any) -> str:
        if self.fail_next > 0:
            self.fail_next -= 1
            return "451 4.3.0 try again later"
        message = BytesParser(policy=default_policy).parsebytes(envelope.content)
        assert isinstance(message, EmailMessage)
        self.messages.append(message)
        return "250 OK"

    async def wait_for(self, count: int, timeout: float = 10.0) -> list[EmailMessage]:
        await wait_until(lambda: len(self.messages) >= count, f"{count} mails", timeout)
        return self.messages

    async def wait_for_message(self, id_part: str, timeout: float = 10.0) -> EmailMessage:
        """The mail whose Message-ID contains `id_part` (kind, assignment id, side)."""

        def found() -> EmailMessage | None:
            return next((m for m in self.messages if id_part in str(m["Message-ID"])), None)

        return await wait_until(found, f"the mail {id_part}", timeout)

    def to(self, address: str) -> list[EmailMessage]:
        return [m for m in self.messages if m["To"] == address]


def body_of(message: EmailMessage) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    return content.replace("\r\n", "\n")


def confirm_link(message: EmailMessage) -> str:
    match = re.search(r"https?://\S+/confirm/\S+", body_of(message))
    assert match, body_of(message)
    return match.group(0)


@pytest.fixture
def inbox() -> Iterator[Inbox]:
    handler = Inbox(free_port())
    controller = Controller(handler, hostname="127.0.0.1", port=handler.port)
    controller.start()
    try:
        yield handler
    finally:
        controller.stop()
