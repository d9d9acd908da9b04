"""Compose mails from the German and English templates, by the recipient's language."""

from __future__ import annotations

from dataclasses import dataclass

import jinja2

KINDS = ("confirm_request", "activated", "reset", "expired")


@dataclass(frozen=True)
class MailView:
    """Everything a mail template may use."""

    recipient_name: str
    side: str  # "owner" or "target": which party this mail goes to
    block_id: str
    block_text: str
    first_number: str
    last_number: str
    number_count: int
    owner_name: str
    owner_customer: str
    target_name: str
    target_customer: str
    expires_at: str
    confirm_url: str | None = None


@dataclass(frozen=True)
class Mail:
    subject: str
    body: str


class Composer:
    def __init__(self) -> None:
        self._env = jinja2.Environment(
            loader=jinja2.PackageLoader("provisioner.mail", "templates"),
            undefined=jinja2.StrictUndefined,
            autoescape=False,  # noqa: S701 - plain-text mails, never HTML
            keep_trailing_newline=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def compose(self, kind: str, language: str, view: MailView) -> Mail:
        """The template's first line is the subject; the rest, after a blank line, the body."""
        text = self._env.get_template(f"{kind}.{language}.txt").render(v=view)
        subject, _, body = text.partition("\n\n")
        # A header must be one line, whatever a name in it contains.
        subject = " ".join(subject.split())
        return Mail(subject=subject, body=body)
