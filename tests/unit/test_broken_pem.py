"""context.make_context and a pem that cannot be used (issue #18 item 2): in a
STARTTLS server mode, the pem's line and NO_TLS at LOG3 and no context (the session
offers no STARTTLS); in every other mode 3.22's fatal error; and only the pem's
errors, never a bad -C or -A (those are no broken certificate).
"""

import pytest
from conftest import RecordingLog

from stunnel3.engine import context
from stunnel3.options import parse
from stunnel3.tls import ContextError, PemError


def make(argv: str):
    log = RecordingLog()
    try:
        return context.make_context(parse(argv.split()), log), log
    except ContextError as error:
        return error, log


@pytest.mark.parametrize("mode", ["smtp-", "smtp", "pop3-", "pop3", "imap-"])
def test_a_starttls_server_mode_goes_on_without_a_context(tmp_path, mode):
    pem = tmp_path / "missing.pem"
    ctx, log = make(f"-p {pem} -n {mode} -F 3")
    assert ctx is None
    said = f"{pem}: No such file or directory (2)"
    assert [text for level, text in log.lines if level <= 3] == [said, context.NO_TLS]
    assert log.lines[-1][1].startswith("stunnel 3.22 on ")  # STUNNEL_INFO still follows


@pytest.mark.parametrize("argv", ["-F 3", "-c -n smtp -r 25", "-c -n smtp- -r 25"])
def test_plain_tls_and_client_mode_keep_322s_fatal_error(tmp_path, argv):
    pem = tmp_path / "missing.pem"
    error, log = make(f"-p {pem} {argv}")
    assert isinstance(error, PemError)
    assert error.text == f"{pem}: No such file or directory (2)"
    assert context.NO_TLS not in log.text()


def test_a_bad_cipher_list_is_fatal_in_a_starttls_mode_too(pki):
    error, log = make(f"-p {pki['server']} -n smtp- -F 3 -C NONSENSE")
    assert isinstance(error, ContextError) and not isinstance(error, PemError)
    assert error.text.startswith("SSL_CTX_set_cipher_list: ")


def test_a_good_pem_makes_a_context(pki):
    ctx, log = make(f"-p {pki['server']} -n smtp- -F 3")
    assert ctx is not None
    assert context.NO_TLS not in log.text()
