"""Rendering the confirm page and its error pages, in the recipient's language."""

from __future__ import annotations

from dataclasses import dataclass

import jinja2

from provisioner.service.assignments import ConfirmView

TEXT: dict[str, dict[str, str]] = {
    "de": {
        "title": "Rufnummernblock zuordnen",
        "intro_owner": "Sie bestätigen als Inhaber der Rufnummern.",
        "intro_target": "Sie bestätigen als Kundennummer mit der Cloud-Telefonanlage.",
        "numbers": "Rufnummern",
        "owner": "Inhaber",
        "target": "Cloud-Telefonanlage von",
        "billing": "Gespräche über diese Rufnummern werden weiterhin über die Kundennummer"
        " {owner} abgerechnet.",
        "state": "Stand",
        "owner_confirmed": "Inhaber hat bestätigt",
        "target_confirmed": "Cloud-Telefonanlage hat bestätigt",
        "yes": "ja",
        "no": "nein",
        "button": "Zuordnung bestätigen",
        "valid_until": "Gültig bis",
        "done": "Danke, Ihre Bestätigung ist eingegangen.",
        "already": "Sie haben bereits bestätigt.",
        "waiting": "Die Zuordnung wird wirksam, sobald auch die andere Seite bestätigt hat.",
        "active": "Die Zuordnung ist aktiv: die Rufnummern werden in der Cloud-Telefonanlage"
        " genutzt.",
        "reset": "Diese Zuordnung wurde zurückgesetzt. Der Link gilt nicht mehr.",
        "expired": "Diese Anfrage ist abgelaufen, weil nicht rechtzeitig beide Seiten bestätigt"
        " haben. Der Link gilt nicht mehr.",
        "undo": "Rückgängig machen: im Kundenportal, Rufnummernverwaltung, \u201eZuordnung"
        " zurücksetzen\u201c.",
        "state_pending": "wartet auf Bestätigung",
        "state_active": "aktiv",
        "state_reset": "zurückgesetzt",
        "state_expired": "abgelaufen",
    },
    "en": {
        "title": "Assign a number block",
        "intro_owner": "You confirm as the owner of the numbers.",
        "intro_target": "You confirm as the customer account with the cloud PBX.",
        "numbers": "Numbers",
        "owner": "Owner",
        "target": "Cloud PBX of",
        "billing": "Calls over these numbers stay billed to customer number {owner}.",
        "state": "State",
        "owner_confirmed": "Owner confirmed",
        "target_confirmed": "Cloud PBX confirmed",
        "yes": "yes",
        "no": "no",
        "button": "Confirm assignment",
        "valid_until": "Valid until",
        "done": "Thank you, your confirmation has been recorded.",
        "already": "You have confirmed already.",
        "waiting": "The assignment takes effect once the other side has confirmed too.",
        "active": "The assignment is active: the numbers are used in the cloud PBX.",
        "reset": "This assignment has been reset. The link is no longer valid.",
        "expired": "This request expired because both sides did not confirm in time."
        " The link is no longer valid.",
        "undo": "To undo: customer portal, number management, \u201cReset assignment\u201d.",
        "state_pending": "waiting for confirmation",
        "state_active": "active",
        "state_reset": "reset",
        "state_expired": "expired",
    },
}

NOT_FOUND = {
    "title": "Link unknown / Link unbekannt",
    "message": "This confirmation link is unknown. Please use the link from the mail exactly"
    " as sent. / Dieser Bestätigungslink ist unbekannt. Bitte verwenden Sie den Link genau"
    " wie in der Mail.",
}


@dataclass(frozen=True)
class ConfirmPage:
    t: dict[str, str]
    language: str
    view: ConfirmView
    can_confirm: bool
    message: str | None


class Pages:
    def __init__(self) -> None:
        self._env = jinja2.Environment(
            loader=jinja2.PackageLoader("provisioner.web", "templates"),
            undefined=jinja2.StrictUndefined,
            autoescape=True,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    def confirm(self, view: ConfirmView) -> str:
        language = view.recipient.language
        t = TEXT[language]
        state = view.assignment.state
        message: str | None = None
        if state in ("reset", "expired"):
            message = t[state]
        elif state == "active":
            message = t["active"]
        elif view.just_confirmed:
            message = t["done"] + " " + t["waiting"]
        elif view.side_confirmed:
            message = t["already"] + " " + t["waiting"]
        page = ConfirmPage(
            t=t,
            language=language,
            view=view,
            can_confirm=state == "pending" and not view.side_confirmed,
            message=message,
        )
        return self._env.get_template("confirm.html").render(p=page)

    def not_found(self) -> str:
        return self._env.get_template("message.html").render(
            title=NOT_FOUND["title"], message=NOT_FOUND["message"]
        )
