"""Which TLS library runs us, and whether it is recent enough.

Two ways to get pyOpenSSL and cryptography, and they differ in whose OpenSSL
answers:
- a distribution's packages (Debian 12: python3-openssl 23.0,
  python3-cryptography 38): cryptography is linked with the system's shared
  libssl, which the distribution's security updates reach;
- pip's wheels: cryptography's wheel carries its own OpenSSL, linked into the
  wheel's binding, which only a new wheel updates.
`openssl_text()` names the version and the origin (the log's STUNNEL_INFO line
and -V carry it): whether the process has a shared libssl mapped.

The oldest versions we run on are Debian 12's (MINIMUM); `problem()` says in
one line what is older, before a session starts (stunnel, stunnel3-setup).
Where the two differ in what we call, the difference is handled beside the
call: tls.py (Context.clear_mode, pyOpenSSL 25.3), tls_warmup.py (pyOpenSSL's
own X509/PKey before 24.3), and `load_pem_certificates` here (cryptography 39).
"""

import sys

# (distribution name, module, oldest version we run on): Debian 12's packages.
MINIMUM = (("pyOpenSSL", "OpenSSL", (23, 0)), ("cryptography", "cryptography", (38, 0)))


def _version(text: str) -> tuple[int, ...]:
    """`23.0.0` -> (23, 0): the major and minor numbers, all MINIMUM compares."""
    numbers = []
    for part in text.split(".")[:2]:
        if not part.isdigit():
            break
        numbers.append(int(part))
    return tuple(numbers)


def problem() -> str | None:
    """What we import that is too old, in one line; None when all is recent enough."""
    for name, module_name, oldest in MINIMUM:
        try:
            module = __import__(module_name)
        except ImportError as error:
            return f"unable to load {name}: {error}"
        found = getattr(module, "__version__", "0")
        if _version(found) < oldest:
            where = getattr(module, "__file__", None) or module_name
            wanted = ".".join(map(str, oldest))
            return f"{name} {found} ({where}) is too old: stunnel3 needs {name} {wanted} or later"
    return None


def versions() -> str:
    """`pyOpenSSL 23.0.0, cryptography 38.0.4, OpenSSL 3.0.22 ... (origin)` for -V and the log."""
    import cryptography
    import OpenSSL

    return f"pyOpenSSL {OpenSSL.__version__}, cryptography {cryptography.__version__}, " + (
        openssl_text()
    )


_openssl_text: list[str] = []  # found once per process (and by the warm helper for its workers)


def openssl_text() -> str:
    """`OpenSSL 3.0.22 25 Aug 2026 (the system's, /usr/lib/.../libssl.so.3)` or the like."""
    if not _openssl_text:
        from OpenSSL import SSL

        library = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
        _openssl_text.append(f"{library} ({openssl_origin(library)})")
    return _openssl_text[0]


_origins: dict[str, str] = {}  # found before the jail (service._load_modules), kept for after


def openssl_origin(library: str) -> str:
    """Whose OpenSSL the binding runs: a shared libssl (the system's), or the wheel's copy.

    A wheel's binding has OpenSSL linked in and loads no libssl; a binding linked
    with a shared libssl has it mapped once imported. Python's own ssl module
    maps the system's libssl too: if it is loaded, a libssl of another version
    than the binding reports is not the binding's. The answer is kept: the
    STUNNEL_INFO line is logged inside the jail, where there is no /proc."""
    if library not in _origins:
        _origins[library] = _find_origin(library)
    return _origins[library]


def _find_origin(library: str) -> str:
    try:
        with open("/proc/self/maps", "rb") as maps:
            paths = {line.split(None, 5)[-1].strip() for line in maps if b"/libssl.so" in line}
    except OSError:
        return "origin unknown"  # no /proc (a jail)
    python_ssl = sys.modules.get("_ssl")
    if python_ssl is not None and getattr(python_ssl, "OPENSSL_VERSION", library) != library:
        paths = set()
    if not paths:
        return "cryptography's own copy, not the system's"
    path = min(paths).decode(sys.getfilesystemencoding(), "replace")
    return f"the system's, {path}" if path.startswith(("/usr/lib/", "/lib/")) else path


def load_pem_certificates(data: bytes) -> list:
    """Every certificate in a PEM text, in order; ValueError when there is none."""
    from cryptography import x509

    load_all = getattr(x509, "load_pem_x509_certificates", None)
    if load_all is not None:
        return load_all(data)
    # cryptography before 39: one certificate per call, so cut the text at each END line
    end = b"-----END CERTIFICATE-----"
    begin, end = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
    pieces = [piece for piece in data.split(end)[:-1] if begin in piece]
    if not pieces:
        raise ValueError("no certificate in PEM data")
    return [x509.load_pem_x509_certificate(p[p.index(begin) :] + end) for p in pieces]
