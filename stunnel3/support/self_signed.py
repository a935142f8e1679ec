"""A new key and a certificate it signs itself, in one pem as stunnel reads it.

stunnel3-setup makes the service's certificate with it (setup/pem.py) and the TLS
warm-up its throwaway ones (engine/tls_warmup.py). The warm-up may run inside the
daemon's jail, where no module can be imported: so this file imports nothing at
its top, and what `pem` imports (datetime and cryptography's x509, hashes,
serialization and key types) comes with cryptography.x509, which the warm-up loads
before the jail; an extension that needs more is the caller's to build.
"""


def pem(hostname: str, key_type: str, valid_for, serial: int | None = None, extensions=()) -> bytes:
    """The unencrypted key (stunnel starts unattended: no passphrase), then a certificate
    for hostname that it signs, valid from an hour ago for `valid_for` (a timedelta).

    key_type: "rsa" (2048 bits), else EC P-256. serial: None for a random one.
    extensions: (x509 extension, critical) pairs, added in order.
    """
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if key_type == "rsa":
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    else:
        key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number() if serial is None else serial)
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + valid_for)
    )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    cert = builder.sign(key, hashes.SHA256())
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_pem + cert.public_bytes(serialization.Encoding.PEM)
