"""Building the standard scene of the flow tests through the public API."""

from __future__ import annotations

from typing import Any

from fixtures_mail import Inbox, confirm_link
from fixtures_service import Api

OWNER = "K200300"  # Munich, owns the block
TARGET = "K100200"  # Berlin, has the cloud PBX
OTHER = "K300400"  # Cologne, has a PBX too
BLOCK = "muc-main"
OWNER_MAIL = "admin@isar.example"
TARGET_MAIL = "it@spree.example"


async def scene(api: Api) -> None:
    await api.ok(
        "PUT",
        f"/v1/accounts/{TARGET}",
        {"name": "Spree Logistik GmbH", "email": TARGET_MAIL, "language": "de"},
    )
    await api.ok("PUT", f"/v1/accounts/{TARGET}/pbx")
    await api.ok(
        "PUT",
        f"/v1/accounts/{OWNER}",
        {"name": "Isar Logistik GmbH", "email": OWNER_MAIL, "language": "en"},
    )
    await api.ok(
        "PUT",
        f"/v1/accounts/{OWNER}/blocks/{BLOCK}",
        {"number": "+4989123456", "range": "0-99", "mode": "pbx"},
    )
    await api.ok(
        "PUT",
        f"/v1/accounts/{OTHER}",
        {"name": "Rhein Logistik GmbH", "email": "it@rhein.example", "language": "de"},
    )
    await api.ok("PUT", f"/v1/accounts/{OTHER}/pbx")


async def request_assignment(api: Api, inbox: Inbox) -> tuple[dict[str, Any], str, str]:
    """Create the assignment; return it and the confirm links from the owner's and target's mail."""
    assignment = await api.ok("POST", f"/v1/blocks/{BLOCK}/assignment", {"target_customer": TARGET})
    owner_mail = await inbox.wait_for_message(f"confirm_request.{assignment['id']}.owner")
    target_mail = await inbox.wait_for_message(f"confirm_request.{assignment['id']}.target")
    assert owner_mail["To"] == OWNER_MAIL and target_mail["To"] == TARGET_MAIL
    return assignment, confirm_link(owner_mail), confirm_link(target_mail)


async def assign_and_confirm(api: Api, inbox: Inbox) -> dict[str, Any]:
    """The assignment of helpers.scene, confirmed by both sides' links: active."""
    assignment, owner_link, target_link = await request_assignment(api, inbox)
    assert (await api.client.post(path_of(owner_link))).status == 200
    assert (await api.client.post(path_of(target_link))).status == 200
    return assignment


def path_of(link: str) -> str:
    return "/" + link.split("/", 3)[3]
