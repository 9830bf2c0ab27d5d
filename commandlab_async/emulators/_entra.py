"""Microsoft Entra ID's tokens for a service principal, as the ARM emulator and the AKS fake
issue them."""

from __future__ import annotations

import base64
import json
import secrets
import time


def access_token(
    *, tenant_id: str, client_id: str, audience: str, lifetime: int, kid: str
) -> tuple[str, int]:
    """A JWT-shaped access token as Entra ID issues to a service principal (client
    credentials), and when it expires (seconds since the epoch).

    Its signature is random: only the emulator that issued it checks it, by looking it up.
    azure-identity decodes the payload to log who signed in.
    """
    now = int(time.time())
    claims = {
        "aud": audience,
        "iss": f"https://sts.windows.net/{tenant_id}/",
        "iat": now,
        "nbf": now,
        "exp": now + lifetime,
        "appid": client_id,
        "idtyp": "app",
        "oid": client_id,
        "sub": client_id,
        "tid": tenant_id,
        "ver": "1.0",
    }
    header = {"typ": "JWT", "alg": "RS256", "kid": kid}
    parts = [json.dumps(header).encode(), json.dumps(claims).encode(), secrets.token_bytes(64)]
    token = ".".join(base64.urlsafe_b64encode(part).rstrip(b"=").decode() for part in parts)
    return token, now + lifetime
