"""Secrets at rest: API keys hashed, kit MQTT passwords hashed and encrypted, kit command
secrets encrypted with CIZO_SECRET_KEY so a database dump alone reveals none.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from cryptography.fernet import Fernet, InvalidToken

# "regulator" reads national aggregates only (never a kit, account or phone)
ROLES = ("admin", "operator", "support", "finance", "regulator")
NATIONAL_ONLY_ROLES = ("regulator",)  # such keys may not be scoped to one DESCO

_PBKDF2_ITERATIONS = 101


def new_api_key() -> str:
    return "cizo_" + secrets.token_urlsafe(32)


def hash_api_key(key: str) -> str:
    """API keys are long random strings: one SHA-256 is enough and keeps lookups O(1)."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_mqtt_password() -> str:
    return secrets.token_urlsafe(18)


@dataclass(frozen=True, slots=True)
class KitLogin:
    """A kit's new broker password: clear (returned once), hashed, encrypted (stored)."""

    password: str
    hashed: str
    encrypted: str


def new_kit_login(box: SecretBox) -> KitLogin:
    password = new_mqtt_password()
    return KitLogin(password, hash_mqtt_password(password), box.encrypt(password))


def mqtt_password_fingerprint(hashed: str) -> str:
    """A short public tag of a stored hash: tells whether the broker has this password."""
    return hashlib.sha256(hashed.encode()).hexdigest()[:24]


def hash_mqtt_password(password: str, *, salt: bytes | None = None) -> str:
    """Mosquitto 2 ``$7$`` PBKDF2-SHA512 hash (service-account and kit password checks)."""
    salt = salt or secrets.token_bytes(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _PBKDF2_ITERATIONS)
    salt_b64, digest_b64 = base64.b64encode(salt).decode(), base64.b64encode(digest).decode()
    return f"$7${_PBKDF2_ITERATIONS}${salt_b64}${digest_b64}"


def verify_mqtt_password(password: str, stored: str) -> bool:
    try:
        _, tag, iterations, salt_b64, digest_b64 = stored.split("$")
    except ValueError:
        return False
    if tag != "7":
        return False
    digest = hashlib.pbkdf2_hmac(
        "sha512", password.encode(), base64.b64decode(salt_b64), int(iterations)
    )
    return hmac.compare_digest(digest, base64.b64decode(digest_b64))


def generate_secret_key() -> str:
    """A fresh value for CIZO_SECRET_KEY."""
    return Fernet.generate_key().decode()


class SecretBox:
    """Encrypts kit command secrets with the platform key (Fernet: AES-128-CBC + HMAC)."""

    def __init__(self, key: str) -> None:
        try:
            self._fernet = Fernet(key.encode())
        except ValueError as exc:
            raise ValueError(
                "CIZO_SECRET_KEY is not a valid Fernet key (urlsafe base64 of 32 bytes); "
                "generate one with: cizo keygen"
            ) from exc

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode()).decode()

    def decrypt(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise ValueError("stored secret does not decrypt with CIZO_SECRET_KEY") from exc
