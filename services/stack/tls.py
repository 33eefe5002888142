"""The local stack's certificate authority and certificates (the ``cryptography`` package).

``argus stack up`` makes a CA once (``<home>/tls/ca.pem``, its key ``ca.key`` 0600) and
signs the broker's certificate with it (``<home>/tls/<name>.pem``: key and chain in one
PEM file, 0600, as Kafka's ``ssl.keystore.type=PEM`` reads it). Clients trust only this
CA (``ssl_cafile``); the broker's certificate names the addresses it listens on, so
hostname verification stays on. Rotation: delete ``<home>/tls`` and run ``argus stack up``.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.stack.credentials import write_private

VALID_DAYS_CA = 3650
VALID_DAYS_LEAF = 825


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _pem_cert(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def tls_dir(home: Path) -> Path:
    return Path(home).resolve() / "tls"


def ensure_ca(home: Path) -> Path:
    """The CA certificate (``<home>/tls/ca.pem``), created once."""
    d = tls_dir(home)
    ca_pem, ca_key = d / "ca.pem", d / "ca.key"
    if ca_pem.exists() and ca_key.exists():
        return ca_pem
    key = _key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Argus local stack CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS_CA))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    write_private(ca_key, _pem_key(key))
    write_private(ca_pem, _pem_cert(cert))
    ca_pem.chmod(0o644)  # the CA certificate is public; its key is not
    return ca_pem


def ensure_cert(home: Path, name: str, hosts: list[str]) -> Path:
    """``<home>/tls/<name>.pem``: a key and its certificate (signed by the stack's CA, for
    server and client authentication, valid for ``hosts``), in one 0600 PEM file."""
    d = tls_dir(home)
    path = d / f"{name}.pem"
    if path.exists():
        return path
    ensure_ca(home)
    ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    key = _key()
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS_LEAF))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    write_private(path, _pem_key(key) + _pem_cert(cert) + _pem_cert(ca_cert))
    return path
