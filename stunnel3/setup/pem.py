"""stunnel3-setup's certificate (README step 6a): a self-signed one, or a checked pem.

stunnel reads `ssl/stunnel.pem` inside its jail on every connection: a file
that cannot serve (an encrypted key, no key, a certificate of another key) is
refused here, before the service is made, rather than at the first client.
"""

import socket
from pathlib import Path

from stunnel3.engine import tls_library
from stunnel3.support.self_signed import pem as self_signed_pem


class Unusable(Exception):
    """A pem that cannot be stunnel.pem; the text says why, for one line."""


def default_hostname() -> str:
    try:
        me = Path("/var/qmail/control/me").read_text().split("\n")[0].strip()
    except OSError:
        me = ""
    return me or socket.gethostname()


# -- the certificate (README step 6a) --------------------------------------------

KEY_TYPES = ("ec", "rsa")
VALID_DAYS = 397  # what browsers' CAs may issue: clients that check dates accept it


def self_signed(hostname: str, key_type: str) -> bytes:
    """A key and a self-signed certificate for hostname, in one pem as stunnel wants."""
    import datetime

    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    extensions = [
        (x509.SubjectAlternativeName([x509.DNSName(hostname)]), False),
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False),
    ]
    valid_for = datetime.timedelta(days=VALID_DAYS)
    return self_signed_pem(hostname, key_type, valid_for, extensions=extensions)


def check_pem(data: bytes) -> str | None:
    """Why data cannot serve as stunnel.pem (an unencrypted key + its certificate), or None."""
    from cryptography.hazmat.primitives import serialization

    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        return "no unencrypted private key in PEM form"
    try:
        certs = tls_library.load_pem_certificates(data)
    except ValueError:
        return "no certificate"
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    ours = key.public_key().public_bytes(serialization.Encoding.PEM, public)
    if certs[0].public_key().public_bytes(serialization.Encoding.PEM, public) != ours:
        return "the first certificate is not the key's"
    return None


def read_pem(pem_file: str) -> bytes:
    """The pem's bytes, if it can serve as stunnel.pem (raises Unusable)."""
    try:
        data = Path(pem_file).read_bytes()
    except OSError as error:
        raise Unusable(f"unable to read {pem_file}: {error.strerror}") from None
    problem = check_pem(data)
    if problem:
        raise Unusable(f"unable to use {pem_file}: {problem}")
    return data
