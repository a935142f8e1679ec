"""tls.py with no sockets: two TlsSessions over memory BIOs, a loop moving bytes.

Certificates come from trustme per run; a second CA makes the "wrong CA" cases.
"""

import os

import pytest
import trustme
from conftest import RecordingLog
from cryptography.hazmat.primitives.asymmetric import ec
from OpenSSL import SSL

from stunnel3.options import Options
from stunnel3.tls import ContextError, TlsError, TlsSession, check_pem, make_context


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    base = tmp_path_factory.mktemp("tlsunit")
    ca, other_ca = trustme.CA(), trustme.CA()
    paths = {}

    def write(name, blob):
        paths[name] = str(base / name)
        blob.write_to_path(paths[name])

    write("ca", ca.cert_pem)
    write("server", ca.issue_cert("localhost").private_key_and_cert_chain_pem)
    client = ca.issue_cert("client.example")
    write("client", client.private_key_and_cert_chain_pem)
    write("client_cert", client.cert_chain_pems[0])
    write("stranger", other_ca.issue_cert("stranger.example").private_key_and_cert_chain_pem)
    write(
        "ecdsa",
        trustme.CA(key_type=trustme.KeyType.ECDSA)
        .issue_cert("ec.example")
        .private_key_and_cert_chain_pem,
    )
    # a key that belongs to no certificate in the file
    other = ca.issue_cert("other.example")
    mismatch = base / "mismatch.pem"
    mismatch.write_bytes(other.private_key_pem.bytes() + client.cert_chain_pems[0].bytes())
    paths["mismatch"] = str(mismatch)
    assert ec  # ECDSA keys come from cryptography through trustme
    return paths


def pump(client: TlsSession, server: TlsSession) -> None:
    """Move ciphertext both ways until nothing moves."""
    for _ in range(50):
        a, b = client.outgoing(), server.outgoing()
        if not a and not b:
            return
        if a:
            server.receive(a)
        if b:
            client.receive(b)
        for side in (client, server):
            if not side.established:
                side.handshake()


def handshake(server_opts: Options, client_opts: Options, log=None):
    log = log or RecordingLog()
    server = TlsSession(make_context(server_opts, log), server=True)
    client = TlsSession(make_context(client_opts, log), server=False)
    client.handshake()
    pump(client, server)
    return client, server, log


def test_handshake_and_data_both_ways(certs):
    client, server, _ = handshake(Options(pem=certs["server"]), Options(client=True))
    assert client.established and server.established
    assert server.info().version in ("TLSv1.3", "TLSv1.2")
    client.write(b"EHLO x\r\n")
    server.receive(client.outgoing())
    assert server.read() == b"EHLO x\r\n"
    assert server.read() is None  # want read: nothing more yet
    server.write(b"\x00\xff" * 40000)  # several records
    client.receive(server.outgoing())
    got = b""
    while (chunk := client.read()) is not None:
        got += chunk
    assert got == b"\x00\xff" * 40000


def test_close_notify_and_tcp_eof_read_as_eof_and_writing_goes_on(certs):
    for via_close_notify in (True, False):
        client, server, _ = handshake(Options(pem=certs["server"]), Options(client=True))
        if via_close_notify:
            client.close()
            server.receive(client.outgoing())
        else:
            server.receive(b"")  # TCP FIN, no close_notify: a half-closing SMTP client
        assert server.read() == b""
        server.write(b"221 bye\r\n")  # the reply a half-closed client still waits for
        server.close()
        client.receive(server.outgoing())
        assert client.read() == b"221 bye\r\n" and client.read() == b""


def test_ecdsa_key(certs):
    client, server, _ = handshake(Options(pem=certs["ecdsa"]), Options(client=True))
    assert server.established


def test_tls_1_1_is_refused_and_the_alert_is_left_to_send(certs):
    old = SSL.Context(SSL.TLS_METHOD)
    old.set_max_proto_version(SSL.TLS1_1_VERSION)
    old.set_cipher_list(b"DEFAULT:@SECLEVEL=0")
    server = TlsSession(make_context(Options(pem=certs["server"]), RecordingLog()), server=True)
    client = TlsSession(old, server=False)
    client.handshake()
    server.receive(client.outgoing())
    with pytest.raises(TlsError, match="SSL_accept"):
        server.handshake()
    # a fatal alert record (type 21) with protocol_version (70): the relay sends it
    assert server.outgoing() == b"\x15\x03\x02\x00\x02\x02\x46"


def test_a_renegotiation_is_refused_counted_and_the_session_goes_on(certs):
    server = TlsSession(make_context(Options(pem=certs["server"]), RecordingLog()), server=True)
    tls12 = SSL.Context(SSL.TLS_METHOD)
    tls12.set_max_proto_version(SSL.TLS1_2_VERSION)
    client = TlsSession(tls12, server=False)
    client.handshake()
    pump(client, server)
    assert server.renegotiations_refused == 0
    client._conn.renegotiate()  # pyOpenSSL's client API; our session has none
    client.handshake()
    server.receive(client.outgoing())
    assert server.read() is None  # the ClientHello is refused, nothing decrypted
    client.receive(server.outgoing())  # no_renegotiation, a warning: an OpenSSL
    assert server.renegotiations_refused == 1  # (counted as it leaves)
    with pytest.raises(TlsError, match="no renegotiation"):  # client gives up
        client.handshake()
    server.write(b"still here\r\n")  # the server's side of the session goes on
    assert server.outgoing()
    server.close()  # our close_notify is an alert too, but no refusal,
    server.read()  # even with a read before the drain
    server.outgoing()
    assert server.renegotiations_refused == 1


def test_compression_and_renegotiation_are_off(certs):
    ctx = make_context(Options(pem=certs["server"]), RecordingLog())
    options = ctx.set_options(0)
    assert options & SSL.OP_NO_COMPRESSION and options & SSL.OP_NO_RENEGOTIATION


@pytest.mark.parametrize(
    "level, client_pem, ok, said",
    [
        (1, None, True, ""),  # 1: verify if present
        (1, "stranger", False, "VERIFY ERROR: depth=0"),
        (2, None, False, ""),  # 2: required
        (2, "client", True, "VERIFY OK: depth=0, /O=trustme"),
        (2, "stranger", False, "VERIFY ERROR"),
        (3, "client", False, "VERIFY ERROR ONLY MY: no cert for"),  # not installed locally
    ],
)
def test_verify_levels(certs, level, client_pem, ok, said):
    server_opts = Options(pem=certs["server"], verify_level=level, ca_file=certs["ca"])
    client_opts = Options(client=True, pem=certs[client_pem] if client_pem else None)
    log = RecordingLog()
    if ok:
        client, server, _ = handshake(server_opts, client_opts, log)
        assert server.established
    else:
        with pytest.raises(TlsError):
            client, server, _ = handshake(server_opts, client_opts, log)
            client.write(b"x")  # TLS 1.3: the client learns of the refusal after its Finished
            server.receive(client.outgoing())
            server.read()
    assert said in log.text()


def test_verify_level_3_accepts_a_locally_installed_certificate(certs, tmp_path):
    store = tmp_path / "store.pem"
    store.write_bytes(open(certs["ca"], "rb").read() + open(certs["client_cert"], "rb").read())
    server_opts = Options(pem=certs["server"], verify_level=3, ca_file=str(store))
    client, server, log = handshake(server_opts, Options(client=True, pem=certs["client"]))
    assert server.established and server.peer_names()[0].startswith("/O=trustme")


def test_client_verifies_the_server(certs):
    good = Options(client=True, verify_level=2, ca_file=certs["ca"])
    client, server, _ = handshake(Options(pem=certs["server"]), good)
    assert client.established
    with pytest.raises(TlsError, match="SSL_connect"):
        handshake(Options(pem=certs["stranger"]), good)


def test_missing_pem_is_3_22s_line(tmp_path):
    missing = str(tmp_path / "nope.pem")
    with pytest.raises(ContextError) as error:
        check_pem(missing, RecordingLog())  # 3.22 stat()ed it before the seed and the context
    assert error.value.text == f"{missing}: No such file or directory (2)"


def test_key_that_does_not_match(certs):
    with pytest.raises(ContextError, match="Private key does not match the certificate"):
        make_context(Options(pem=certs["mismatch"]), RecordingLog())


def test_pem_without_key_and_garbage(tmp_path, certs):
    only_cert = tmp_path / "cert.pem"
    only_cert.write_bytes(open(certs["client_cert"], "rb").read())
    with pytest.raises(ContextError) as error:
        make_context(Options(pem=str(only_cert)), RecordingLog())
    assert error.value.text == (
        f"SSL_CTX_use_PrivateKey_file: no private key in {only_cert} (it must hold the key and"
        " its certificate)"
    )
    garbage = tmp_path / "garbage.pem"
    garbage.write_bytes(b"not a pem\n")
    with pytest.raises(ContextError, match="SSL_CTX_use_certificate_chain_file"):
        make_context(Options(pem=str(garbage)), RecordingLog())


def test_world_readable_pem_is_warned_about(certs, tmp_path):
    loose = tmp_path / "loose.pem"
    loose.write_bytes(open(certs["server"], "rb").read())
    os.chmod(loose, 0o644)
    log = RecordingLog()
    check_pem(str(loose), log)
    assert log.lines == [(4, f"Wrong permissions on {loose}")]


def test_bad_ca_file_and_cipher_list(certs, tmp_path):
    with pytest.raises(ContextError, match="Error loading verify certificates from"):
        make_context(
            Options(pem=certs["server"], verify_level=2, ca_file=str(tmp_path / "none.pem")),
            RecordingLog(),
        )
    with pytest.raises(ContextError, match="SSL_CTX_set_cipher_list"):
        make_context(Options(pem=certs["server"], cipher_list="NOTHING-AT-ALL"), RecordingLog())


@pytest.fixture(params=[True, False], ids=["into-one-buffer", "through-pyopenssl"])
def bulk_path(request, monkeypatch):
    """Both ways of moving bulk bytes (tls._DIRECT): straight through pyOpenSSL's binding
    into the session's buffer, and pyOpenSSL's recv() and bio_read() where it has none."""
    from stunnel3 import tls

    monkeypatch.setattr(tls, "_DIRECT", request.param)
    return request.param


@pytest.mark.usefixtures("bulk_path")
def test_a_large_write_is_one_burst_and_read_many_batches_records(certs):
    client, server, _ = handshake(Options(pem=certs["server"]), Options(client=True))
    payload = bytes(range(256)) * 1024  # 256 KiB: 16 records
    server.write(bytearray(payload))  # no partial write: all of it is encrypted at once
    burst = server.outgoing()
    assert server.outgoing() == b""  # the sized read took everything
    assert len(payload) < len(burst) < len(payload) + 16 * 64
    client.receive(burst)
    first = client.read_many(64 * 1024)
    assert first == payload[: 64 * 1024]  # whole records, joined up to the size
    rest = client.read_many(1 << 20)
    assert first + rest == payload
    assert client.read_many(1 << 20) is None


@pytest.mark.usefixtures("bulk_path")
def test_read_many_gives_the_plaintext_before_the_eof(certs):
    client, server, _ = handshake(Options(pem=certs["server"]), Options(client=True))
    client.write(b"QUIT\r\n")
    client.close()
    server.receive(client.outgoing())
    assert server.read_many(1 << 20) == b"QUIT\r\n"
    assert server.read_many(1 << 20) == b""
    assert server.read_many(1 << 20) == b""  # EOF stays EOF


@pytest.mark.usefixtures("bulk_path")
def test_read_many_gives_the_records_before_a_bad_one_then_its_error(certs):
    client, server, _ = handshake(Options(pem=certs["server"]), Options(client=True))
    server.write(b"a" * 16384)
    server.write(b"b" * 16384)
    burst = bytearray(server.outgoing())
    burst[-20] ^= 1  # the second record's tag no longer matches
    client.receive(bytes(burst))
    assert client.read_many(1 << 20) == b"a" * 16384
    with pytest.raises(TlsError, match=r"^SSL_read: decryption failed or bad record mac"):
        client.read_many(1 << 20)
    assert client.outgoing()  # the bad_record_mac alert, for the relay to send


@pytest.mark.usefixtures("bulk_path")
def test_read_many_waits_for_the_rest_of_a_record(certs):
    client, server, _ = handshake(Options(pem=certs["server"]), Options(client=True))
    server.write(b"x" * 20000)  # two records
    burst = server.outgoing()
    client.receive(burst[:10000])
    assert client.read_many(1 << 20) is None
    assert client.read_many(1 << 20) is None  # no bytes since: not even asked again
    client.receive(burst[10000:])
    assert client.read_many(1 << 20) == b"x" * 20000


def test_want_read_is_remembered_until_bytes_arrive(certs):
    client, server, _ = handshake(Options(pem=certs["server"]), Options(client=True))
    assert server.read() is None and server.read() is None
    client.write(b"x")
    server.receive(client.outgoing())
    assert server.read() == b"x"


# -- tls_warmup: OpenSSL's first-use work, done once before forking --------------------


def test_warm_up_alone_handshakes_with_throwaway_rsa_and_ec_keys(monkeypatch):
    from stunnel3.engine import tls_warmup

    made = []
    real = tls_warmup._throwaway_pem
    monkeypatch.setattr(tls_warmup, "_throwaway_pem", lambda kind: made.append(kind) or real(kind))
    warned: list[str] = []
    tls_warmup.warm_up(warned.append)
    assert warned == []
    assert made == ["rsa", "ec"]


@pytest.mark.parametrize("client", [False, True])
def test_warm_up_on_the_real_context_logs_nothing_and_imports_nothing(certs, client):
    """The daemon warms up inside its jail: a verifying context's callback stays silent,
    and no module may be imported (the jail holds no Python)."""
    import subprocess
    import sys

    if client:
        options = Options(client=True, verify_level=2, ca_file=certs["ca"])
    else:
        options = Options(pem=certs["server"], verify_level=2, ca_file=certs["ca"])
    code = (
        "import sys\n"
        f"sys.path[:0] = {sys.path!r}\n"
        "from conftest import RecordingLog\n"
        "from stunnel3 import tls\nfrom stunnel3.engine import tls_warmup\n"
        "from stunnel3.options import Options\n"
        f"log = RecordingLog(); ctx = tls.make_context({options!r}, log); log.lines.clear()\n"
        "sys.meta_path.clear()  # from here on, any import fails\n"
        f"warned = []; tls_warmup.warm_up(warned.append, ctx, server={not client})\n"
        "print(warned, log.lines)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        cwd=os.path.dirname(os.path.dirname(__file__)),
    )  # fmt: skip
    assert done.stdout == "[] []\n", done.stderr


def test_a_failed_warm_up_is_one_warning_never_an_exception():
    from stunnel3.engine import tls_warmup

    keyless = make_context(Options(client=True), RecordingLog())  # a "server" with no key
    warned: list[str] = []
    tls_warmup.warm_up(warned.append, keyless, server=True)
    assert len(warned) == 1
    assert warned[0].startswith("TLS warm-up failed: ")


def test_warm_up_without_x509_makes_its_pems_in_a_child(monkeypatch):
    """The warm helper leaves cryptography.x509 unloaded: the throwaway pems come from a
    forked child, and nothing here uses x509."""
    from stunnel3.engine import tls_warmup
    from stunnel3.support import on_demand

    monkeypatch.setattr(on_demand, "deferred", lambda name: name == "cryptography.x509")

    def refused(*args):
        raise AssertionError("x509 used in the helper")

    monkeypatch.setattr(tls_warmup.x509, "load_pem_x509_certificate", refused)
    monkeypatch.setattr(tls_warmup.serialization, "load_pem_private_key", refused)
    warned: list[str] = []
    tls_warmup.warm_up(warned.append)
    assert warned == []


# -- kept contexts: the warm helper's, for the pem its workers will read --------------


@pytest.fixture
def kept(monkeypatch):
    from stunnel3 import tls

    monkeypatch.setattr(tls, "_kept", {})
    return tls._kept


def test_a_kept_context_serves_a_pem_of_the_same_bytes(certs, kept, tmp_path):
    from stunnel3 import tls

    seen_by_the_helper = tmp_path / "outside.pem"
    seen_by_the_helper.write_bytes(open(certs["server"], "rb").read())
    options = Options(pem=certs["server"], cipher_list="HIGH")
    tls.keep_context(options, str(seen_by_the_helper))
    (ctx,) = kept.values()
    log = RecordingLog()
    assert make_context(options, log) is ctx
    assert log.lines == [(7, f"Certificate: {certs['server']}")]  # as a pem loaded says it
    other_ciphers = Options(pem=certs["server"])
    assert make_context(other_ciphers, RecordingLog()) is not ctx
    client, server, _ = handshake(options, Options(client=True))
    assert server.info().cipher


def test_no_kept_context_for_other_bytes_verification_or_a_broken_pem(certs, kept, tmp_path):
    from stunnel3 import tls

    outside = tmp_path / "outside.pem"
    outside.write_bytes(open(certs["server"], "rb").read())
    tls.keep_context(Options(pem=certs["server"]), str(outside))
    assert len(kept) == 1
    assert make_context(Options(pem=certs["stranger"]), RecordingLog()) not in kept.values()
    verifying = Options(pem=certs["server"], verify_level=1, ca_file=certs["ca"])
    tls.keep_context(verifying, str(outside))
    assert len(kept) == 1  # -v reads more than the pem: never kept
    assert make_context(verifying, RecordingLog()) not in kept.values()
    keyless = tmp_path / "keyless.pem"
    keyless.write_bytes(open(certs["client_cert"], "rb").read())
    tls.keep_context(Options(pem=str(keyless)), str(keyless))
    tls.keep_context(Options(pem="missing.pem"), str(tmp_path / "missing.pem"))
    assert len(kept) == 1  # what fails is left for the worker to meet and say
    with pytest.raises(ContextError):
        make_context(Options(pem=str(keyless)), RecordingLog())
    tls.forget_contexts()
    assert kept == {}
