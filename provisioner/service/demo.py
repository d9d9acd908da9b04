"""Demo data for a first look (`provisioner demo`): B with a cloud PBX in Berlin, A
with a Munich block, and the curl commands of the flow between them."""

from __future__ import annotations

from provisioner.service import accounts, blocks
from provisioner.service.unit import Unit
from provisioner.settings import Settings

DEMO_OWNER, DEMO_TARGET, DEMO_BLOCK = "K200300", "K100200", "muc-main"


async def seed(unit: Unit) -> None:
    await accounts.put_account(
        unit, DEMO_TARGET, "Spree Logistik GmbH (Berlin)", "it@spree.example", "de"
    )
    await accounts.put_pbx(unit, DEMO_TARGET)
    await accounts.put_account(
        unit, DEMO_OWNER, "Isar Logistik GmbH (München)", "admin@isar.example", "en"
    )
    await blocks.put_block(
        unit, DEMO_TARGET, "ber-main", "+4930123456", "0-99", "pbx",
        trunk=blocks.TrunkCredentials("k100200-ber", "Berlin-trunk-1"),
    )  # fmt: skip
    await blocks.put_block(
        unit, DEMO_OWNER, DEMO_BLOCK, "+4989123456", "0-99", "pbx",
        trunk=blocks.TrunkCredentials("k200300-muc", "Munich-trunk-1"),
    )  # fmt: skip


def instructions(settings: Settings) -> str:
    base = settings.public_base_url
    mail_hint = (
        f"mails arrive at the SMTP server {settings.smtp.host}:{settings.smtp.port}"
        if settings.smtp.host
        else f"mails are written to {settings.data_dir / 'mail'}/*.eml"
    )
    return f"""Demo data is in place:
  {DEMO_TARGET}  Spree Logistik GmbH (Berlin): cloud PBX, block ber-main +49 30 123456 0-99
  {DEMO_OWNER}  Isar Logistik GmbH (München): block {DEMO_BLOCK} +49 89 123456 0-99, pbx mode

The flow, with a portal API key in $KEY (the example config's is 'portal-dev-key'):

  # 1. A asks to assign its Munich block to B's PBX; both get a mail ({mail_hint})
  curl -sS -X POST {base}/v1/blocks/{DEMO_BLOCK}/assignment \\
       -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \\
       -H 'Idempotency-Key: demo-assign-1' -d '{{"target_customer": "{DEMO_TARGET}"}}'

  # 2. Both open the link in their mail and press the button (or POST to it):
  curl -sS -X POST {base}/confirm/<token from the owner's mail>
  curl -sS -X POST {base}/confirm/<token from the target's mail>

  # 3. The state, as the portal shows it ("active" once both confirmed)
  curl -sS {base}/v1/blocks/{DEMO_BLOCK}/assignment -H "Authorization: Bearer $KEY"

  # 4. Reset it, then read the audit trail
  curl -sS -X DELETE {base}/v1/blocks/{DEMO_BLOCK}/assignment -H "Authorization: Bearer $KEY"
  curl -sS {base}/v1/assignments/<assignment id>/events -H "Authorization: Bearer $KEY"
"""
