"""tls_library.py: the start-up version check, whose OpenSSL runs us, and the PEM reader.

Debian 12's own packages (pyOpenSSL 23.0, cryptography 38) are the oldest we run
on; tests/e2e/test_deb_package.py runs the whole chain on them. Here: the rules,
on the suite's libraries, with versions changed by monkeypatch.
"""

import re
import subprocess
import sys

import cryptography
import OpenSSL
import pytest
import trustme
from conftest import RecordingLog
from cryptography import x509
from OpenSSL import SSL

from stunnel3.engine import tls_library
from stunnel3.options import Options
from stunnel3.tls import TlsSession, make_context


def test_the_suites_libraries_are_recent_enough():
    assert tls_library.problem() is None


@pytest.mark.parametrize(
    "module, name, old, oldest",
    [(OpenSSL, "pyOpenSSL", "22.1.0", "23.0"), (cryptography, "cryptography", "37.0.4", "38.0")],
)
def test_a_library_older_than_debian_12s_is_named_in_one_line(
    monkeypatch, module, name, old, oldest
):
    monkeypatch.setattr(module, "__version__", old)
    text = tls_library.problem()
    assert text == (
        f"{name} {old} ({module.__file__}) is too old: stunnel3 needs {name} {oldest} or later"
    )
    assert "\n" not in text


@pytest.mark.parametrize(
    "text, numbers",
    [("23.0.0", (23, 0)), ("26.4.0", (26, 4)), ("38.0.4", (38, 0)), ("41.0.0rc1", (41, 0)),
     ("22.1", (22, 1)), ("dev", ())],
)  # fmt: skip
def test_versions_compare_by_major_and_minor(text, numbers):
    assert tls_library._version(text) == numbers


def test_exactly_the_oldest_versions_pass_and_one_below_fails(monkeypatch):
    monkeypatch.setattr(OpenSSL, "__version__", "23.0.0")
    monkeypatch.setattr(cryptography, "__version__", "38.0.0")
    assert tls_library.problem() is None
    monkeypatch.setattr(cryptography, "__version__", "37.9.9")
    assert tls_library.problem().startswith("cryptography 37.9.9 (")


def test_a_session_is_refused_at_start_up_with_that_line(monkeypatch, tmp_path, capfd):
    """What stunnel logs when the library is too old: one line at LOG3, status 1."""
    from stunnel3 import stunnel

    monkeypatch.setattr(OpenSSL, "__version__", "22.0.0")
    monkeypatch.chdir(tmp_path)
    status = stunnel.main(["stunnel", "-f", "-F", "3", "-p", "missing.pem"])
    err = capfd.readouterr().err
    assert status == 1
    assert re.search(r" LOG3\[\d+:\d+\]: pyOpenSSL 22\.0\.0 \(.*\) is too old: .*23\.0", err)
    assert "missing.pem" not in err  # refused before the engine ran


def pem_with_chain() -> bytes:
    ca = trustme.CA()
    intermediate = ca.create_child_ca()
    leaf = intermediate.issue_cert("mail.example")
    return leaf.private_key_and_cert_chain_pem.bytes()


def test_every_certificate_of_a_pem_in_order_with_or_without_the_newer_call(monkeypatch):
    data = pem_with_chain()
    modern = tls_library.load_pem_certificates(data)
    monkeypatch.delattr(x509, "load_pem_x509_certificates", raising=False)  # cryptography before 39
    older = tls_library.load_pem_certificates(data)
    assert len(modern) == 2  # the leaf, then the intermediate
    assert older == modern
    assert modern[0].issuer == modern[1].subject  # the leaf first, signed by the next


def test_no_certificate_is_a_value_error_either_way(monkeypatch):
    key_only = b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
    with pytest.raises(ValueError):
        tls_library.load_pem_certificates(key_only)
    monkeypatch.delattr(x509, "load_pem_x509_certificates", raising=False)
    with pytest.raises(ValueError):
        tls_library.load_pem_certificates(key_only)


def origin_in_a_fresh_process(prelude: str = "") -> str:
    code = f"{prelude}\nfrom stunnel3.engine import tls_library\nprint(tls_library.openssl_text())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def binding_links_libssl() -> bool:
    """What ldd says of cryptography's compiled binding: a shared libssl, or none."""
    import pathlib

    bindings = pathlib.Path(cryptography.__file__).parent / "hazmat" / "bindings"
    shared = [str(path) for path in bindings.glob("_*.so")]
    done = subprocess.run(["ldd", *shared], capture_output=True, text=True, timeout=60)
    return "libssl.so" in done.stdout


def test_the_origin_is_what_ldd_says_of_the_binding():
    text = origin_in_a_fresh_process()
    library = SSL.OpenSSL_version(SSL.OPENSSL_VERSION).decode()
    if binding_links_libssl():
        assert re.fullmatch(rf"{re.escape(library)} \(the system's, /\S+/libssl\.so\S*\)", text)
    else:
        assert text == f"{library} (cryptography's own copy, not the system's)"


def test_pythons_own_ssl_module_does_not_change_the_answer():
    """Python's ssl maps the system's libssl whatever cryptography links with."""
    assert origin_in_a_fresh_process("import ssl") == origin_in_a_fresh_process()


def test_without_clear_mode_partial_writes_stay_on_and_the_bytes_are_the_same(monkeypatch, pki):
    """pyOpenSSL before 25.3 has no Context.clear_mode: write() loops record by record."""
    monkeypatch.delattr(SSL.Context, "clear_mode", raising=False)
    server = TlsSession(make_context(Options(pem=str(pki["server"])), RecordingLog()), server=True)
    client = TlsSession(make_context(Options(client=True), RecordingLog()), server=False)
    for _ in range(20):
        client.handshake()
        server.receive(client.outgoing())
        server.handshake()
        client.receive(server.outgoing())
        if client.established and server.established:
            break
    payload = bytes(range(256)) * 4096  # 1 MiB: 64 records
    client.write(payload)
    server.receive(client.outgoing())
    received = b""
    while len(received) < len(payload):
        plain = server.read()
        assert plain, "the server ran out of records"
        received += plain
    assert received == payload


def test_stunnel3_setup_refuses_before_making_anything(monkeypatch, tmp_path, capsys):
    from stunnel3.setup import service as setup_service

    monkeypatch.setattr(cryptography, "__version__", "37.0.0")
    assert setup_service.main([str(tmp_path / "smtp-tls")]) == 111
    err = capsys.readouterr().err
    assert err.startswith("stunnel3-setup: fatal: cryptography 37.0.0 (") and "38.0" in err
    assert not (tmp_path / "smtp-tls").exists()
