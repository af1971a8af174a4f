"""A small X.509 toolkit for the broker: a CA, a server certificate, per-kit client certs.

Used by the tests (a TLS listener with a throw-away CA) and by ``cizo broker certs`` for
deployments that want client certificates per kit (Mosquitto ``require_certificate`` +
``use_identity_as_username``: the certificate's CN is the kit id, so the same ACL
patterns apply). Keys are ECDSA P-256: small and fast on kit hardware.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def key_pem(self) -> bytes:
        return self.key.private_bytes(serialization.Encoding.PEM,
                                      serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption())

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """``stem.crt`` (0644) and ``stem.key`` (0600) in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        crt, key = directory / f"{stem}.crt", directory / f"{stem}.key"
        crt.write_bytes(self.cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(self.key_pem)
        return crt, key


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CIZO"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _builder(subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey,
             days: int) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=days)))


def make_ca(cn: str = "CIZO test CA", days: int = 3650) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (_builder(_name(cn), _name(cn), key, days)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))
    return Issued(key, cert)


def _leaf(ca: Issued, cn: str, days: int, usage: x509.ObjectIdentifier,
          san: list[x509.GeneralName] | None) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    b = (_builder(_name(cn), ca.cert.subject, key, days)
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage([usage]), critical=False))
    if san:
        b = b.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return Issued(key, b.sign(ca.key, hashes.SHA256()))


def make_server_cert(ca: Issued, hosts: list[str], days: int = 825) -> Issued:
    """A broker certificate valid for these DNS names / IP addresses."""
    san: list[x509.GeneralName] = []
    for h in hosts:
        try:
            san.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            san.append(x509.DNSName(h))
    return _leaf(ca, hosts[0], days, ExtendedKeyUsageOID.SERVER_AUTH, san)


def make_client_cert(ca: Issued, kit_id: str, days: int = 3650) -> Issued:
    """A kit's client certificate: CN = kit id = its MQTT username on the broker."""
    return _leaf(ca, kit_id, days, ExtendedKeyUsageOID.CLIENT_AUTH, None)


def load(crt: Path, key: Path) -> Issued:
    cert = x509.load_pem_x509_certificate(crt.read_bytes())
    private = serialization.load_pem_private_key(key.read_bytes(), password=None)
    if not isinstance(private, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key} is not an EC private key")
    return Issued(private, cert)
