"""Secrets at rest and their redaction: pure rules, no I/O."""

from __future__ import annotations

import pytest

from provisioner.domain.credentials import (
    SecretBox,
    SecretsUnavailable,
    SecretUnreadable,
    sip_ha1,
)
from provisioner.render.render import digest, redact, redacted


def test_ha1_is_the_rfc_2617_digest() -> None:
    # RFC 2617, section 3.5: Mufasa, testrealm@host.com, "Circle Of Life".
    assert sip_ha1("Mufasa", "testrealm@host.com", "Circle Of Life") == (
        "939e7578ed9e3c518a452acee763bce9"
    )


def test_sealed_secrets_open_with_any_configured_key_and_reseal_under_the_first() -> None:
    old, new = SecretBox.new_key(), SecretBox.new_key()
    sealed = SecretBox([old]).seal("Munich-trunk-1")
    assert "Munich-trunk-1" not in sealed
    both = SecretBox([new, old])
    assert both.open(sealed) == "Munich-trunk-1"
    resealed = both.reseal(sealed)
    assert SecretBox([new]).open(resealed) == "Munich-trunk-1"
    with pytest.raises(SecretUnreadable):
        SecretBox([old]).open(resealed)
    with pytest.raises(SecretUnreadable, match="no configured key opens"):
        SecretBox([new]).open(sealed)


def test_without_a_key_nothing_is_sealed_or_opened() -> None:
    empty = SecretBox()
    assert not empty.configured and SecretBox([SecretBox.new_key()]).configured
    with pytest.raises(SecretsUnavailable) as refused:
        empty.seal("x")
    assert (refused.value.status, refused.value.code) == (422, "secrets_key_missing")
    # The portal shows the detail and points at the field; the operator reads the rest.
    assert refused.value.field == "trunk.password"
    assert "secrets.keys configured" in str(refused.value)
    assert "ask the operator to configure a key" in str(refused.value)
    with pytest.raises(SecretUnreadable, match=r"no secrets\.keys configured to open"):
        empty.open("token")
    with pytest.raises(SecretUnreadable):
        empty.reseal("token")
    assert "configured=False" in repr(empty)


def test_keys_are_checked() -> None:
    assert SecretBox.valid_key(SecretBox.new_key())
    assert not SecretBox.valid_key("short")
    assert not SecretBox.valid_key("")


def test_redaction_hides_every_secret_option_and_nothing_else() -> None:
    text = (
        "[t]\ntype = auth\nusername = u\npassword = abc;def\nmd5_cred=0123abcd\n"
        " password => spaced\npasswords = 1\n; password = in a comment line\n"
    )
    shown = redact(text)
    assert shown == (
        "[t]\ntype = auth\nusername = u\npassword = <secret>\nmd5_cred=<secret>\n"
        " password => <secret>\npasswords = 1\n; password = in a comment line\n"
    )
    assert redacted({"a": text, "b": "x\n"}) == {"a": shown, "b": "x\n"}


def test_the_revision_digest_covers_paths_and_texts() -> None:
    one = digest({"a": "x", "b": "y"})
    assert one == digest({"b": "y", "a": "x"})  # order of the dict does not matter
    assert one != digest({"a": "y", "b": "x"})
    assert one != digest({"a": "x", "c": "y"})
    assert len(one) == 64
