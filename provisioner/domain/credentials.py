"""SIP credentials at rest: phone passwords as digest hashes, trunk passwords encrypted.

A phone's password is shown once, when the phone is created, and from then on only its
digest hash (HA1 = MD5(username:realm:password)) exists: Asterisk authenticates phones
with `md5_cred`, so neither the database nor the files hold the password itself.

A trunk's password must reach the carrier in plain text inside digest authentication,
so Asterisk's file carries it; in PostgreSQL it is sealed with Fernet (AES-128-CBC with
HMAC-SHA256) under the keys of `secrets.keys`. The first key seals, every key opens, so
a new key is put first, `provisioner rotate-secrets` reseals, and the old key goes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from provisioner.domain.errors import InvalidInput


class SecretsUnavailable(InvalidInput):
    """Trunk credentials were sent, but no key to seal them is configured."""

    code = "secrets_key_missing"


class SecretUnreadable(Exception):
    """A sealed value that none of the configured keys opens (a key was removed)."""


def sip_ha1(username: str, realm: str, password: str) -> str:
    """RFC 2617 HA1, what Asterisk's `md5_cred` holds."""
    text = f"{username}:{realm}:{password}"
    return hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()


class SecretBox:
    """Seals and opens trunk passwords with the configured Fernet keys."""

    def __init__(self, keys: Sequence[str] = ()) -> None:
        self._fernet = MultiFernet([Fernet(k.encode()) for k in keys]) if keys else None

    def __repr__(self) -> str:
        return f"SecretBox(configured={self.configured})"

    @property
    def configured(self) -> bool:
        return self._fernet is not None

    @staticmethod
    def new_key() -> str:
        return Fernet.generate_key().decode()

    @staticmethod
    def valid_key(key: str) -> bool:
        try:
            Fernet(key.encode())
        except (ValueError, TypeError):
            return False
        return True

    def seal(self, plain: str) -> str:
        if self._fernet is None:
            raise SecretsUnavailable(
                "this service has no secrets.keys configured, so it cannot store trunk"
                " credentials; ask the operator to configure a key",
                field="trunk.password",
            )
        return self._fernet.encrypt(plain.encode()).decode()

    def open(self, sealed: str) -> str:
        return self._with_keys(lambda f: f.decrypt(sealed.encode()).decode())

    def reseal(self, sealed: str) -> str:
        """The same secret under the first key (key rotation)."""
        return self._with_keys(lambda f: f.rotate(sealed.encode()).decode())

    def _with_keys(self, use: Callable[[MultiFernet], str]) -> str:
        if self._fernet is None:
            raise SecretUnreadable("no secrets.keys configured to open a sealed trunk password")
        try:
            return use(self._fernet)
        except InvalidToken:
            raise SecretUnreadable("no configured key opens a sealed trunk password") from None
