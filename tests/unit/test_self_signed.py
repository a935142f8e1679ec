"""support/self_signed.py: the key, then the certificate it signs, in one pem."""

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from stunnel3.support import self_signed


def lifetime(cert: x509.Certificate) -> datetime.timedelta:
    if hasattr(cert, "not_valid_after_utc"):  # cryptography 42 and later
        return cert.not_valid_after_utc - cert.not_valid_before_utc
    return cert.not_valid_after - cert.not_valid_before


@pytest.mark.parametrize(
    ("key_type", "kind"), [("rsa", rsa.RSAPrivateKey), ("ec", ec.EllipticCurvePrivateKey)]
)
def test_the_pem_is_an_unencrypted_key_and_the_certificate_it_signs(key_type, kind):
    made = self_signed.pem("mx.example", key_type, datetime.timedelta(days=2), serial=7)
    assert made.startswith(b"-----BEGIN PRIVATE KEY-----\n")  # PKCS8, no passphrase
    key = serialization.load_pem_private_key(made, None)
    cert = x509.load_pem_x509_certificate(made)
    assert isinstance(key, kind)
    assert cert.public_key() == key.public_key()
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == "mx.example"
    assert cert.serial_number == 7
    assert lifetime(cert) == datetime.timedelta(days=2, hours=1)  # from an hour ago
    assert list(cert.extensions) == []


def test_a_random_serial_and_the_extensions_given():
    name = x509.SubjectAlternativeName([x509.DNSName("mx.example")])
    made = [
        self_signed.pem("mx.example", "ec", datetime.timedelta(hours=1), extensions=[(name, False)])
        for _ in range(2)
    ]
    certs = [x509.load_pem_x509_certificate(pem) for pem in made]
    assert certs[0].serial_number != certs[1].serial_number
    (extension,) = certs[0].extensions
    assert extension.value == name and extension.critical is False
