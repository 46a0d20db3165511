"""A private certificate authority for the broker: EC P-256 keys, a server certificate, client certificates."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sdk.broker.secret_files import write_secret

__all__ = ["DEFAULT_HOSTS", "Authority", "load_authority", "new_authority"]

#: Names the server certificate always covers, so that a broker on this machine is reachable by them.
DEFAULT_HOSTS = ("localhost", "127.0.0.1")
CA_DAYS = 3650
LEAF_DAYS = 825  # the longest validity clients such as Apple's accept for a TLS server certificate


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Fedge"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    )


def _san(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


@dataclass(frozen=True)
class Authority:
    """A CA key and its self-signed certificate; it signs the broker's and the clients' certificates."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    def write(self, cert_path: Path, key_path: Path) -> None:
        """Write the certificate (public) and the key (mode 0600)."""
        cert_path.write_bytes(self.certificate.public_bytes(serialization.Encoding.PEM))
        write_secret(key_path, _key_pem(self.key))

    def issue(
        self, common_name: str, cert_path: Path, key_path: Path, *, hosts: Sequence[str] = (), server: bool
    ) -> x509.Certificate:
        """Sign a new key pair for ``common_name`` (a server: ``hosts`` become its SANs); write both files."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))  # a device clock a little behind still accepts it
            .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=True,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key()), critical=False)
        )
        if hosts:
            builder = builder.add_extension(x509.SubjectAlternativeName([_san(h) for h in hosts]), critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        write_secret(key_path, _key_pem(key))
        return certificate


def new_authority(common_name: str = "Fedge broker CA") -> Authority:
    """A fresh CA: an EC P-256 key and a self-signed certificate valid for ten years."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(_name(common_name))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(key, certificate)


def load_authority(cert_path: Path, key_path: Path) -> Authority:
    """The CA that :meth:`Authority.write` saved."""
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ValueError(f"{key_path} is not an EC private key")
    return Authority(key, x509.load_pem_x509_certificate(cert_path.read_bytes()))
