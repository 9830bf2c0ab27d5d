"""Google service-account keys and the OAuth2 JWT bearer grant, as a fake token endpoint sees
them: what the Cloud Run emulator and the GKE fake share.

:func:`write_service_account_key` writes a JSON key whose ``token_uri`` is the fake's and
teaches the fake its public key; :func:`verify_assertion` checks a grant's assertion
against the keys it knows, as Google's token endpoint would.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import exceptions as auth_exceptions
from google.auth import jwt

GOOGLE_ISSUER = "https://accounts.google.com"
GOOGLE_TOKEN_ENDPOINT = "https://oauth2.googleapis.com/token"  # google-auth's assertion `aud`
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"

TrustedKeys = dict[str, tuple[str, str]]
"""What a fake token endpoint knows: private_key_id -> (client email, public key PEM)."""


def rsa_key() -> tuple[str, str]:
    """A fresh RSA 2048 key: (private PKCS#8 PEM, public PEM)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return private.decode(), public.decode()


def write_service_account_key(path: Path, email: str, token_uri: str, trusted: TrustedKeys) -> Path:
    """Write a service-account JSON key for ``token_uri``; ``trusted`` learns its key id,
    email and public key (what a fake token endpoint checks assertions against)."""
    private, public = rsa_key()
    key_id = secrets.token_hex(20)
    trusted[key_id] = (email, public)
    info = {
        "type": "service_account",
        "project_id": email.split("@", 1)[1].split(".", 1)[0],
        "private_key_id": key_id,
        "private_key": private,
        "client_email": email,
        "client_id": str(secrets.randbelow(10**21)),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
    }
    path.write_text(json.dumps(info, indent=2))
    return path


def verify_assertion(
    assertion: str, trusted: TrustedKeys, token_uri: str, *, by_issuer: bool = False
) -> dict[str, Any] | None:
    """The claims of a JWT grant signed by one of the ``trusted`` keys for ``token_uri``
    (or Google's own token endpoint), else None. The key is found by the assertion's key id;
    with ``by_issuer``, failing that, by its issuer's email."""
    try:
        kid = jwt.decode_header(assertion).get("kid")
        if kid not in trusted and by_issuer:
            issuer = jwt.decode(assertion, verify=False).get("iss")
            kid = next((k for k, (e, _) in trusted.items() if e == issuer), None)
        if kid is None or kid not in trusted:
            return None
        email, public = trusted[kid]
        claims: dict[str, Any] = jwt.decode(
            assertion,
            certs=public,
            audience=[GOOGLE_TOKEN_ENDPOINT, token_uri],
            clock_skew_in_seconds=10,
        )
    except (ValueError, auth_exceptions.GoogleAuthError):
        return None
    return claims if claims.get("iss") == email else None
