"""tls.py and an encrypted private key (issue #18 item 1): never a prompt, never a
read from descriptor 0 (in inetd mode, the client's connection), one line saying so.

Each case runs in a forked child whose fd 0 is a pipe holding the right passphrase:
the child reports the error and what is still unread on fd 0."""

import os
import pickle
import subprocess

import pytest
from conftest import RecordingLog
from OpenSSL import SSL

from stunnel3 import tls
from stunnel3.options import Options
from stunnel3.tls import ContextError, make_context

PASSPHRASE = b"secret\n"


@pytest.fixture(scope="module", params=["pkcs8", "traditional"])
def encrypted_pem(request, tmp_path_factory):
    """A key encrypted the two ways OpenSSL writes PEM, with its certificate after it."""
    base = tmp_path_factory.mktemp(request.param)
    key, cert = base / "key.pem", base / "cert.pem"
    if request.param == "pkcs8":
        make_key = ["openssl", "genpkey", "-algorithm", "RSA", "-aes-128-cbc"]
        make_key += ["-pass", "pass:secret", "-out", key]
    else:
        make_key = ["openssl", "genrsa", "-aes128", "-traditional", "-passout", "pass:secret"]
        make_key += ["-out", key, "2048"]
    subprocess.run(make_key, check=True, capture_output=True, timeout=60)
    subprocess.run(
        ["openssl", "req", "-x509", "-key", key, "-passin", "pass:secret", "-out", cert,
         "-days", "1", "-subj", "/CN=localhost"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    pem = base / "stunnel.pem"
    pem.write_bytes(key.read_bytes() + cert.read_bytes())
    return pem


def with_passphrase_on_fd_0(work):
    """work() in a child whose fd 0 holds the passphrase; (its result, fd 0's unread bytes)."""
    stdin_r, stdin_w = os.pipe()
    os.write(stdin_w, PASSPHRASE)
    os.close(stdin_w)
    result_r, result_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.dup2(stdin_r, 0)
            os.setsid()  # no controlling terminal: OpenSSL's prompt would fall back to fd 0
            try:
                result = work()
            except Exception as error:  # noqa: BLE001 - the parent judges it
                result = (type(error).__name__, getattr(error, "text", str(error)))
            os.set_blocking(0, False)
            try:
                unread = os.read(0, 100)
            except BlockingIOError:
                unread = b""
            os.write(result_w, pickle.dumps((result, unread)))
        finally:
            os._exit(0)
    os.close(stdin_r)
    os.close(result_w)
    data = b""
    while chunk := os.read(result_r, 65536):
        data += chunk
    os.close(result_r)
    os.waitpid(pid, 0)
    return pickle.loads(data)


def test_an_encrypted_key_is_one_line_and_fd_0_is_never_read(encrypted_pem):
    result, unread = with_passphrase_on_fd_0(
        lambda: make_context(Options(pem=str(encrypted_pem)), RecordingLog()) and "loaded"
    )
    assert result == (
        "PemError",  # a ContextError: fatal but with -n (context.tls_unavailable)
        f"{encrypted_pem}: the private key is encrypted and no passphrase is asked: decrypt "
        f"it (openssl pkey -in {encrypted_pem} -out key.pem) and put key.pem in its place",
    )
    assert unread == PASSPHRASE


def test_openssl_itself_is_given_no_passphrase(encrypted_pem):
    """Past the PEM check too: OpenSSL's callback is ours, and it has nothing to give."""

    def load():
        ctx = SSL.Context(SSL.TLS_METHOD)
        callback = tls._refuse_passphrases(ctx)
        try:
            ctx.use_privatekey_file(str(encrypted_pem))
        except SSL.Error:
            return "refused", callback.asked
        return "loaded", callback.asked

    assert with_passphrase_on_fd_0(load) == (("refused", True), PASSPHRASE)


def test_the_line_fits_a_log_line_for_the_usual_paths():
    text = ContextError(tls._encrypted("/service/smtp-tls/ssl/stunnel.pem")).text
    assert len(text.encode()) <= 255
    assert len(tls._encrypted("stunnel.pem")) < 160


def test_a_daemon_refuses_it_before_it_binds(stunnel_bin, encrypted_pem):
    """Daemon mode reads the pem as root before bind: the same line, exit 1, the
    passphrase on its stdin left alone."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = subprocess.run(
        [stunnel_bin, "-f", "-D", "7", "-p", str(encrypted_pem), "-d", f"127.0.0.1:{port}",
         "-r", "1"],
        input=PASSPHRASE, capture_output=True, timeout=30, start_new_session=True,
    )  # fmt: skip
    assert done.returncode == 1
    assert b"the private key is encrypted and no passphrase is asked" in done.stderr
    assert b"pass phrase" not in done.stderr
