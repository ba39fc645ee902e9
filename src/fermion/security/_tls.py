"""TLS for the server: a self-signed certificate for local use, and client contexts that trust a given CA."""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from pathlib import Path
from typing import TYPE_CHECKING

from .._files import write_atomic
from ..errors import UserInputError

if TYPE_CHECKING:
    from cryptography import x509

CERT_FILE = "server.crt"
KEY_FILE = "server.key"
VALID_DAYS = 365
RENEW_WITHIN_DAYS = 30
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")


def _names(hosts: list[str]) -> list[x509.GeneralName]:
    from cryptography import x509

    names: list[x509.GeneralName] = []
    for host in dict.fromkeys([*DEFAULT_HOSTS, *(h.strip("[]") for h in hosts if h)]):
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _reusable(cert_path: Path, key_path: Path, wanted: list[x509.GeneralName]) -> bool:
    """Whether the pair on disk matches, covers every wanted name and lives past the renewal window."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (OSError, ValueError, TypeError, x509.ExtensionNotFound):
        return False
    now = datetime.datetime.now(datetime.UTC)
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    return (cert.not_valid_after_utc - now > datetime.timedelta(days=RENEW_WITHIN_DAYS)
            and cert.public_key().public_bytes(serialization.Encoding.PEM, pub)
            == key.public_key().public_bytes(serialization.Encoding.PEM, pub)
            and all(name in sans for name in wanted))


def self_signed_certificate(folder: Path, hosts: list[str]) -> tuple[Path, Path]:
    """(certificate, key) in ``folder``, made on first use and reused until it nears expiry.

    EC P-256, valid 365 days, for localhost, 127.0.0.1, ::1 and ``hosts``; made anew when it
    expires within 30 days or does not name every host. The key file is mode 0600.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    cert_path, key_path = folder / CERT_FILE, folder / KEY_FILE
    names = _names(hosts)
    if _reusable(cert_path, key_path, names):
        return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Fermion self-signed")])
    now = datetime.datetime.now(datetime.UTC)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))  # tolerate a client clock a little behind
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        # a leaf, not a CA: the key can vouch for this server only
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    write_atomic(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()), 0o600)
    write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    return cert_path, key_path


def ssl_context_from(ca: str | os.PathLike[str]) -> ssl.SSLContext:
    """A client context that verifies servers against the certificate(s) in ``ca`` (and their host names)."""
    try:
        context = ssl.create_default_context(cafile=os.fspath(ca))
    except OSError as exc:
        raise UserInputError(f"cannot read the CA certificate {os.fspath(ca)}: {exc.strerror or exc}") from None
    except ssl.SSLError as exc:
        raise UserInputError(f"{os.fspath(ca)} is not a PEM certificate: {exc.reason or exc}") from None
    # the file may hold the server's own (leaf) certificate: trust it as an anchor, as Python 3.13 does
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context
