"""TLS off-loopback: one key and self-signed certificate per sandbox, pinned by the client.

Whenever the client reaches a daemon across a network (an ACI or ECS public IP, a
Kubernetes load balancer), the token must not cross it in clear, and no certificate
authority can vouch for an address nobody knows before the sandbox exists. So the client
makes a fresh key and certificate for each sandbox, hands both to the sandbox with the rest
of its environment, and trusts exactly that certificate and nothing else: not the system
store, not a certificate signed by that key (it is not a CA).
"""

from __future__ import annotations

import asyncio
import datetime
import ssl
from dataclasses import dataclass, field

from ..daemon.protocol import TLS_CERT_ENV, TLS_KEY_ENV

__all__ = ["TLS_CERT_ENV", "TLS_KEY_ENV", "SandboxTls", "make_sandbox_tls", "pinned_context"]

# The certificate is pinned, not checked against a clock the sandbox may not share: it is
# valid from well before it was made until long after any sandbox ends.
_BACKDATE = datetime.timedelta(days=1)
_LIFETIME = datetime.timedelta(days=3650)


@dataclass(frozen=True)
class SandboxTls:
    """One sandbox's TLS material: the certificate the client pins and the daemon's key."""

    name: str
    cert_pem: str
    key_pem: str = field(repr=False)
    """The private key (PEM). Only the sandbox needs it: never log it."""

    def daemon_env(self) -> dict[str, str]:
        """The environment that makes the daemon serve HTTPS with this key."""
        return {TLS_CERT_ENV: self.cert_pem, TLS_KEY_ENV: self.key_pem}

    def client_context(self) -> ssl.SSLContext:
        """An SSL context that accepts this certificate and no other."""
        return pinned_context(self.cert_pem)


def pinned_context(cert_pem: str) -> ssl.SSLContext:
    """An SSL context that accepts the certificate ``cert_pem`` and no other.

    Raises ``ssl.SSLError`` when ``cert_pem`` holds no certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    # The address is known only once the sandbox runs (and a resolver may tunnel to it),
    # so the name is not checked: the certificate itself is the identity.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=cert_pem)
    return context


def _make(name: str) -> SandboxTls:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name[:64])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _LIFETIME)
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        # A leaf, not a CA: nothing it signs is trusted by the pinned context.
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return SandboxTls(
        name=name,
        cert_pem=cert.public_bytes(serialization.Encoding.PEM).decode(),
        key_pem=key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    )


async def make_sandbox_tls(name: str) -> SandboxTls:
    """A fresh P-256 key and self-signed certificate for the sandbox ``name``.

    Needs ``cryptography`` (in the extras of every platform that reaches daemons over a
    network). Made in a thread: key generation is CPU work.
    """
    return await asyncio.to_thread(_make, name)
