"""A throwaway self-signed certificate per run: RSA-2048 or ECDSA P-256, key first (the order
stunnel 3.22's `-p` pem has), made by the same code as stunnel3-setup's."""

from pathlib import Path

from stunnel3.setup.service import self_signed

KEY_TYPES = {"rsa": "rsa", "ecdsa": "ec"}  # the bench's names -> stunnel3-setup's


def write_pem(directory: Path, key_type: str) -> Path:
    if key_type not in KEY_TYPES:
        raise ValueError(f"key type {key_type!r}: rsa or ecdsa")
    pem = directory / f"{key_type}.pem"
    pem.write_bytes(self_signed("localhost", KEY_TYPES[key_type]))
    pem.chmod(0o600)  # all the servers read it as root
    return pem
