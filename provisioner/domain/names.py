"""The names a PBX's objects get in Asterisk, declared once: the templates' view builds
them (render/view.py), the API shows them (a phone's SIP username) and reads them back
(a phone's site), and the apply and the drift check tell a PBX's live objects by them.

All derive from the PBX's slug (its customer number in lower case), so tenants never
collide, and every name of a PBX starts with `<slug>-` (`owns`):
  <slug>-<ext>              phone endpoint, aor and auth (the phone's SIP username)
  <slug>-trunk-<block>      a block's trunk to the carrier (outbound, auth, accountcode)
  <slug>-internal           extensions, ring groups, hints (the BLF subscribe context)
  <slug>-site-<block>       a site's dialing rules: local area code, emergency, outbound
  <slug>-in-<block>         calls from the carrier to the numbers of a block
  <slug>-outbound           the subroutine every external call leaves through
  <slug>-<group>            a pickup group
The longest is <slug>-trunk-<block>; what the API accepts for a block id follows from it
(domain/rules.py)."""

from __future__ import annotations

from provisioner.domain.rules import LONGEST_BLOCK_INFIX


def owned_prefix(slug: str) -> str:
    return f"{slug}-"


def owns(slug: str, name: str) -> bool:
    """Whether an Asterisk object of this name is the PBX's."""
    return name.startswith(owned_prefix(slug))


def phone(slug: str, ext: str) -> str:
    return f"{slug}-{ext}"


def trunk(slug: str, block_id: str) -> str:
    return f"{slug}{LONGEST_BLOCK_INFIX}{block_id}"


def internal(slug: str) -> str:
    return f"{slug}-internal"


def site(slug: str, block_id: str) -> str:
    return f"{slug}-site-{block_id}"


def site_block(slug: str, context: str) -> str | None:
    """The block of a site's context (None: not a site context of this PBX)."""
    prefix = site(slug, "")
    return context.removeprefix(prefix) if context.startswith(prefix) else None


def inbound(slug: str, block_id: str) -> str:
    return f"{slug}-in-{block_id}"


def outbound(slug: str) -> str:
    return f"{slug}-outbound"


def pickup_group(slug: str, group: str) -> str:
    return f"{slug}-{group}"
