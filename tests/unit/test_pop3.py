"""Unit tests of Pop3Proxy: one test per rule of stunnel3/layers/pop3.py."""

import pytest

from stunnel3.layers import pop3
from stunnel3.layers.pop3 import Body, Pop3Proxy
from stunnel3.layers.protocol import Close, Log, StartTls, TlsInfo, ToBackend, ToClient

TLS = TlsInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", 128)
CAPA = b"+OK Capability list follows\r\nTOP\r\nUSER\r\nSASL PLAIN\r\nSTLS\r\nX-WEIRD\r\n.\r\n"


def client_bytes(actions):
    return b"".join(a.data for a in actions if isinstance(a, ToClient))


def backend_bytes(actions):
    return b"".join(a.data for a in actions if isinstance(a, ToBackend))


def greeted(**options) -> Pop3Proxy:
    """A session past the greeting. These tests are of a client that may log in before
    TLS (STUNNEL3_AUTH=plaintext, 3.22's rule); the default is test_credentials.py's."""
    options.setdefault("plaintext_auth", True)
    proxy = Pop3Proxy(**options)
    proxy.start()
    assert client_bytes(proxy.feed_backend(b"+OK POP3 ready <1.2@x>\r\n")) == (
        b"+OK POP3 ready <1.2@x>\r\n"
    )
    return proxy


def in_tls(**options) -> Pop3Proxy:
    proxy = greeted(**options)
    actions = proxy.feed_client(b"STLS\r\n")
    assert actions[-1] == StartTls() and client_bytes(actions) == pop3.BEGIN_TLS
    proxy.tls_started(TLS)
    return proxy


def test_nothing_is_parsed_before_the_greeting():
    proxy = Pop3Proxy()
    assert backend_bytes(proxy.feed_client(b"CAPA\r\n")) == b""
    assert backend_bytes(proxy.feed_backend(b"+OK hi\r\n")) == b"CAPA\r\n"


def test_capa_gets_stls_once_and_only_known_capabilities():
    proxy = greeted()
    assert backend_bytes(proxy.feed_client(b"capa\r\n")) == b"capa\r\n"
    shown = client_bytes(proxy.feed_backend(CAPA))
    assert shown == (b"+OK Capability list follows\r\nTOP\r\nUSER\r\nSASL PLAIN\r\nSTLS\r\n.\r\n")


def test_capa_after_tls_has_no_stls():
    proxy = in_tls()
    proxy.feed_client(b"CAPA\r\n")
    shown = client_bytes(proxy.feed_backend(CAPA))
    assert b"STLS" not in shown and shown.endswith(b"SASL PLAIN\r\n.\r\n")


def test_require_tls_refuses_login_and_hides_it_before_tls():
    proxy = greeted(require_tls=True)
    for command in (b"USER alice\r\n", b"PASS secret\r\n", b"APOP a b\r\n", b"STAT\r\n"):
        actions = proxy.feed_client(command)
        assert client_bytes(actions) == pop3.MUST_STLS and backend_bytes(actions) == b""
    proxy.feed_client(b"CAPA\r\n")
    shown = client_bytes(proxy.feed_backend(CAPA))
    assert shown == b"+OK Capability list follows\r\nTOP\r\nSTLS\r\n.\r\n"
    assert backend_bytes(proxy.feed_client(b"QUIT\r\n")) == b"QUIT\r\n"


def test_require_tls_lets_everything_through_after_tls():
    proxy = in_tls(require_tls=True)
    assert backend_bytes(proxy.feed_client(b"USER alice\r\n")) == b"USER alice\r\n"
    proxy.feed_backend(b"+OK\r\n")
    proxy.feed_client(b"CAPA\r\n")
    assert b"USER\r\n" in client_bytes(proxy.feed_backend(CAPA))


@pytest.mark.parametrize(
    "setup, line, refusal",
    [
        (in_tls, b"STLS\r\n", pop3.STLS_TWICE),
        (greeted, b"STLS now\r\n", pop3.STLS_ARGUMENTS),
    ],
)
def test_stls_refusals(setup, line, refusal):
    proxy = setup()
    actions = proxy.feed_client(line)
    assert client_bytes(actions) == refusal
    assert not any(isinstance(a, (StartTls, Close)) for a in actions)


def test_stls_after_login_is_refused():
    proxy = greeted()
    proxy.feed_client(b"USER a\r\nPASS b\r\n")
    proxy.feed_backend(b"+OK\r\n+OK logged in\r\n")
    assert client_bytes(proxy.feed_client(b"STLS\r\n")) == pop3.STLS_AFTER_LOGIN


def test_stls_waits_for_earlier_responses():
    proxy = greeted()
    actions = proxy.feed_client(b"NOOP\r\nSTLS\r\n")
    assert backend_bytes(actions) == b"NOOP\r\n" and client_bytes(actions) == b""
    actions = proxy.feed_backend(b"+OK\r\n")
    assert client_bytes(actions) == b"+OK\r\n" + pop3.BEGIN_TLS and StartTls() in actions


def test_bytes_after_stls_end_the_session_unforwarded():
    proxy = greeted()
    actions = proxy.feed_client(b"STLS\r\nUSER evil\r\n")
    assert client_bytes(actions) == pop3.STLS_INJECTION
    assert backend_bytes(actions) == b"" and isinstance(actions[-1], Close)
    assert proxy.feed_client(b"more\r\n") == [] and proxy.feed_backend(b"+OK\r\n") == []


def test_nothing_is_parsed_during_the_handshake():
    proxy = greeted()
    proxy.feed_client(b"STLS\r\n")
    assert proxy.feed_client(b"CAPA\r\n") == []
    actions = proxy.tls_started(TLS)
    assert backend_bytes(actions) == b"CAPA\r\n"


def test_multi_line_bodies_are_not_interpreted():
    proxy = greeted()
    proxy.feed_client(b"USER a\r\nPASS b\r\n")
    proxy.feed_backend(b"+OK\r\n+OK\r\n")
    proxy.feed_client(b"RETR 1\r\nCAPA\r\n")
    body = b"+OK 40 octets\r\nSTLS\r\n+OK fake\r\n..\r\n.x\r\n.\r\n"
    assert client_bytes(proxy.feed_backend(body)) == body
    assert client_bytes(proxy.feed_backend(CAPA)).endswith(b"STLS\r\n.\r\n")


@pytest.mark.parametrize(
    "command, multi",
    [
        (b"LIST", True),
        (b"LIST 1", False),
        (b"UIDL", True),
        (b"UIDL 1", False),
        (b"TOP 1 0", True),
        (b"STAT", False),
        (b"AUTH", True),
    ],
)
def test_which_commands_answer_a_body(command, multi):
    proxy = greeted()
    proxy.feed_client(command + b"\r\nNOOP\r\n")
    response = b"+OK\r\n1 2\r\n.\r\n" if multi else b"+OK 1 2\r\n"
    assert client_bytes(proxy.feed_backend(response)) == response
    # the NOOP's answer is recognised as such: STLS is decided right after it
    proxy.feed_client(b"STLS\r\n")
    assert StartTls() in proxy.feed_backend(b"+OK\r\n")


def test_err_to_a_multi_line_command_is_one_line():
    proxy = greeted()
    proxy.feed_client(b"RETR 9\r\nSTLS\r\n")
    actions = proxy.feed_backend(b"-ERR no such message\r\n")
    assert StartTls() in actions


def test_auth_continuations_and_secrets_stay_out_of_the_log():
    proxy = greeted(log_dialogue=True)
    actions = proxy.feed_client(b"USER alice\r\nPASS hunter2\r\n")
    actions += proxy.feed_backend(b"+OK\r\n-ERR bad\r\n")
    actions += proxy.feed_client(b"AUTH PLAIN\r\nAGFsaWNlAGh1bnRlcjI=\r\n")
    assert backend_bytes(actions).endswith(b"AUTH PLAIN\r\n")  # SASL waits for `+ `
    actions += proxy.feed_backend(b"+ \r\n")
    assert backend_bytes(actions).endswith(b"AGFsaWNlAGh1bnRlcjI=\r\n")
    actions += proxy.feed_backend(b"+OK logged in\r\n")
    actions += proxy.feed_client(b"APOP alice 0123456789abcdef\r\n")
    actions += proxy.feed_backend(b"-ERR already\r\n")
    logged = "\n".join(a.text for a in actions if isinstance(a, Log))
    for secret in ("alice", "hunter2", "AGFsaWNl", "0123456789"):
        assert secret not in logged
    assert "C: USER ***" in logged and "C: PASS ***" in logged and "C: ***" in logged
    assert client_bytes(proxy.feed_client(b"STLS\r\n")) == pop3.STLS_AFTER_LOGIN


def test_verbs_end_at_any_blank_so_tab_secrets_stay_out_of_the_log():
    proxy = greeted(log_dialogue=True)
    actions = proxy.feed_client(b"USER\talice\r\npass\t hunter2\r\n")
    actions += proxy.feed_backend(b"+OK\r\n+OK in\r\n")
    logged = [a.text for a in actions if isinstance(a, Log)]
    assert logged == ["C: USER ***", "C: PASS ***", "S: +OK", "S: +OK in"]
    assert client_bytes(proxy.feed_client(b"STLS\r\n")) == pop3.STLS_AFTER_LOGIN


def test_the_backend_decides_sasl_after_a_command_the_proxy_does_not_know():
    proxy = greeted(log_dialogue=True)
    # Not known: a stop point (the SASL line waits), its `+ ` makes the next line SASL.
    actions = proxy.feed_client(b"XAUTH PLAIN\r\nAGFsaWNlAGh1bnRlcjI=\r\n")
    assert backend_bytes(actions) == b"XAUTH PLAIN\r\n"
    actions += proxy.feed_backend(b"+ \r\n")
    assert backend_bytes(actions).endswith(b"AGFsaWNlAGh1bnRlcjI=\r\n")
    actions += proxy.feed_backend(b"+OK in\r\n")  # its +OK counts as a login
    logged = [a.text for a in actions if isinstance(a, Log)]
    assert logged == [
        "C: (13 bytes: not a command this proxy knows)",
        "S: + ",
        "C: ***",
        "S: +OK in",
    ]
    assert client_bytes(proxy.feed_client(b"STLS\r\n")) == pop3.STLS_AFTER_LOGIN


def test_bodies_are_logged_by_size_only():
    proxy = greeted(log_dialogue=True)
    proxy.feed_client(b"RETR 1\r\n")
    actions = proxy.feed_backend(b"+OK\r\nSecret: text\r\n.\r\n")
    logged = [a.text for a in actions if isinstance(a, Log)]
    assert logged == ["S: +OK", "S: (multi-line response, 17 bytes)"]


def test_line_bound_at_and_over():
    proxy = greeted()
    exact = b"NOOP " + b"x" * (pop3.MAX_LINE - 7) + b"\r\n"
    assert backend_bytes(proxy.feed_client(exact)) == exact
    proxy.feed_backend(b"+OK\r\n")
    over = b"NOOP " + b"x" * (pop3.MAX_LINE - 6) + b"\r\n"
    actions = proxy.feed_client(over + b"NOOP\r\n")
    assert client_bytes(actions) == pop3.LINE_TOO_LONG and backend_bytes(actions) == b"NOOP\r\n"


def test_a_line_too_long_is_refused_before_its_end_arrives():
    proxy = greeted()
    assert client_bytes(proxy.feed_client(b"x" * (pop3.MAX_LINE - 1))) == b""
    assert client_bytes(proxy.feed_client(b"x")) == pop3.LINE_TOO_LONG
    assert backend_bytes(proxy.feed_client(b"yyy\r\nNOOP\r\n")) == b"NOOP\r\n"


def test_backend_line_bound():
    proxy = greeted()
    proxy.feed_client(b"NOOP\r\n")
    actions = proxy.feed_backend(b"+OK " + b"x" * pop3.MAX_LINE)
    assert client_bytes(actions) == pop3.BACKEND_LINE_TOO_LONG and isinstance(actions[-1], Close)
    proxy = greeted()
    proxy.feed_client(b"NOOP\r\n")  # a whole line over the bound in one read: the same
    actions = proxy.feed_backend(b"+OK " + b"x" * pop3.MAX_LINE + b"\r\n")
    assert client_bytes(actions) == pop3.BACKEND_LINE_TOO_LONG and isinstance(actions[-1], Close)


def test_pipelining_bound():
    proxy = greeted()
    actions = proxy.feed_client(b"NOOP\r\n" * (pop3.MAX_PENDING + 1))
    assert backend_bytes(actions) == b"NOOP\r\n" * pop3.MAX_PENDING
    assert backend_bytes(proxy.feed_backend(b"+OK\r\n")) == b"NOOP\r\n"


def test_eofs():
    proxy = greeted()
    actions = proxy.feed_client(b"QUIT\r\nNOO")
    actions += proxy.feed_client(b"")
    assert backend_bytes(actions) == b"QUIT\r\n" and actions[-1] == ToBackend(b"")
    actions = proxy.feed_backend(b"+OK bye\r\n-ERR cut")
    actions += proxy.feed_backend(b"")
    assert client_bytes(actions) == b"+OK bye\r\n-ERR cut"
    assert ToClient(b"") in actions and isinstance(actions[-1], Close)


@pytest.mark.parametrize("ending", [b".\r\n", b".\n"])
def test_body_end_split_anywhere(ending):
    whole = b"line\r\n..dot\r\n.x\r\n\n" + ending
    for cut in range(len(whole) + 1):
        body = Body()
        first, rest = body.feed(whole[:cut] + (b"AFTER" if cut == len(whole) else b""))
        if rest is None:
            second, rest = body.feed(whole[cut:] + b"AFTER")
            first += second
        assert first == whole and rest == b"AFTER"
