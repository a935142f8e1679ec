"""Unit tests of ImapProxy: one test per rule of stunnel3/layers/imap.py."""

import pytest

from stunnel3.layers import imap
from stunnel3.layers.imap import ImapProxy, literal, rewrite_line
from stunnel3.layers.protocol import Close, Log, StartTls, TlsInfo, ToBackend, ToClient

TLS = TlsInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", 128)
GREETING = b"* OK [CAPABILITY IMAP4rev1 STARTTLS LITERAL+ COMPRESS=DEFLATE] ready\r\n"


def client_bytes(actions):
    return b"".join(a.data for a in actions if isinstance(a, ToClient))


def backend_bytes(actions):
    return b"".join(a.data for a in actions if isinstance(a, ToBackend))


def greeted(**options) -> ImapProxy:
    """A session past the greeting. These tests are of a client that may log in before
    TLS (STUNNEL3_AUTH=plaintext, 3.22's rule); the default is test_credentials.py's."""
    options.setdefault("plaintext_auth", True)
    proxy = ImapProxy(**options)
    proxy.start()
    shown = client_bytes(proxy.feed_backend(GREETING))
    assert shown == b"* OK [CAPABILITY IMAP4rev1 LITERAL+ STARTTLS] ready\r\n"
    return proxy


def in_tls(**options) -> ImapProxy:
    proxy = greeted(**options)
    actions = proxy.feed_client(b"a1 STARTTLS\r\n")
    assert client_bytes(actions) == b"a1 " + imap.BEGIN_TLS and actions[-1] == StartTls()
    proxy.tls_started(TLS)
    return proxy


def test_nothing_is_parsed_before_the_greeting():
    proxy = ImapProxy()
    assert proxy.feed_client(b"a1 CAPABILITY\r\n") == []
    assert backend_bytes(proxy.feed_backend(b"* OK hi\r\n")) == b"a1 CAPABILITY\r\n"


@pytest.mark.parametrize(
    "line, before, after",
    [
        (
            b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n",
            b"* CAPABILITY IMAP4rev1 AUTH=PLAIN STARTTLS\r\n",
            b"* CAPABILITY IMAP4rev1 AUTH=PLAIN\r\n",
        ),
        (
            b"* capability IMAP4rev1 starttls LOGINDISABLED\r\n",
            b"* capability IMAP4rev1 LOGINDISABLED STARTTLS\r\n",
            b"* capability IMAP4rev1 LOGINDISABLED\r\n",
        ),
        (
            b"a2 OK [CAPABILITY IMAP4rev1 COMPRESS=DEFLATE IDLE] Logged in\r\n",
            b"a2 OK [CAPABILITY IMAP4rev1 IDLE STARTTLS] Logged in\r\n",
            b"a2 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n",
        ),
        (b"* 1 FETCH (FLAGS (\\Seen))\r\n",) * 3,
    ],
)
def test_capability_rewrite(line, before, after):
    assert rewrite_line(line, offer_starttls=True) == before
    assert rewrite_line(line, offer_starttls=False) == after


def test_capability_response_before_and_after_tls():
    proxy = greeted()
    proxy.feed_client(b"a0 CAPABILITY\r\n")
    shown = client_bytes(proxy.feed_backend(b"* CAPABILITY IMAP4rev1\r\na0 OK done\r\n"))
    assert shown == b"* CAPABILITY IMAP4rev1 STARTTLS\r\na0 OK done\r\n"
    proxy = in_tls()
    assert backend_bytes(proxy.feed_client(b"a2 CAPABILITY\r\n")) == b"a2 CAPABILITY\r\n"
    shown = client_bytes(proxy.feed_backend(b"* CAPABILITY IMAP4rev1 STARTTLS\r\na2 OK\r\n"))
    assert shown == b"* CAPABILITY IMAP4rev1\r\na2 OK\r\n"


@pytest.mark.parametrize(
    "setup, line, refusal",
    [
        (in_tls, b"b1 STARTTLS\r\n", imap.STARTTLS_TWICE),
        (greeted, b"b1 starttls now\r\n", imap.STARTTLS_ARGUMENTS),
    ],
)
def test_starttls_refusals(setup, line, refusal):
    proxy = setup()
    actions = proxy.feed_client(line)
    assert client_bytes(actions) == b"b1 " + refusal and backend_bytes(actions) == b""
    assert not any(isinstance(a, (StartTls, Close)) for a in actions)


def test_starttls_after_login_or_preauth_is_refused():
    proxy = greeted()
    proxy.feed_client(b"a1 LOGIN alice secret\r\n")
    proxy.feed_backend(b"a1 OK [CAPABILITY IMAP4rev1] Logged in\r\n")
    assert client_bytes(proxy.feed_client(b"a2 STARTTLS\r\n")) == (
        b"a2 " + imap.STARTTLS_AUTHENTICATED
    )
    proxy = ImapProxy(plaintext_auth=True)
    proxy.feed_backend(b"* PREAUTH ready\r\n")
    assert client_bytes(proxy.feed_client(b"a2 STARTTLS\r\n")) == (
        b"a2 " + imap.STARTTLS_AUTHENTICATED
    )


def test_failed_login_keeps_starttls_available():
    proxy = greeted()
    proxy.feed_client(b"a1 LOGIN alice wrong\r\n")
    proxy.feed_backend(b"a1 NO [AUTHENTICATIONFAILED] no\r\n")
    assert StartTls() in proxy.feed_client(b"a2 STARTTLS\r\n")


def test_starttls_waits_for_pending_commands_and_parses_nothing_after():
    proxy = greeted()
    actions = proxy.feed_client(b"a1 NOOP\r\na2 STARTTLS\r\n")
    assert backend_bytes(actions) == b"a1 NOOP\r\n" and client_bytes(actions) == b""
    actions = proxy.feed_backend(b"* 3 EXISTS\r\na1 OK done\r\n")
    assert client_bytes(actions) == b"* 3 EXISTS\r\na1 OK done\r\na2 " + imap.BEGIN_TLS
    assert actions[-1] == StartTls()
    assert proxy.feed_client(b"a3 CAPABILITY\r\n") == []
    assert backend_bytes(proxy.tls_started(TLS)) == b"a3 CAPABILITY\r\n"


def test_bytes_after_starttls_end_the_session_unforwarded():
    proxy = greeted()
    actions = proxy.feed_client(b"a1 STARTTLS\r\na2 LOGIN evil evil\r\n")
    assert client_bytes(actions) == b"a1 " + imap.STARTTLS_INJECTION + imap.CLOSING
    assert backend_bytes(actions) == b"" and isinstance(actions[-1], Close)
    assert not any(isinstance(a, StartTls) for a in actions)
    assert proxy.feed_client(b"x\r\n") == [] and proxy.feed_backend(b"* OK\r\n") == []


def test_server_literals_are_not_interpreted():
    proxy = greeted()
    proxy.feed_client(b"a1 FETCH 1 BODY[]\r\na2 STARTTLS\r\n")
    body = b"a1 OK fake\r\n* CAPABILITY X\r\n"
    response = b"* 1 FETCH (BODY[] {%d}\r\n" % len(body) + body + b")\r\n"
    actions = proxy.feed_backend(response)
    assert client_bytes(actions) == response and not any(isinstance(a, StartTls) for a in actions)
    actions = proxy.feed_backend(b"a1 OK done\r\n")
    assert client_bytes(actions) == b"a1 OK done\r\na2 " + imap.BEGIN_TLS


def test_local_responses_wait_for_the_end_of_a_server_literal():
    proxy = greeted()  # an unsolicited FETCH (RFC 9051 section 7: any time)
    assert client_bytes(proxy.feed_backend(b"* 1 FETCH (BODY[] {10}\r\n12345")) == (
        b"* 1 FETCH (BODY[] {10}\r\n12345"
    )
    assert client_bytes(proxy.feed_client(b"a2 COMPRESS DEFLATE\r\n")) == b""
    actions = proxy.feed_backend(b"67890)\r\n")
    assert client_bytes(actions) == b"67890)\r\n" + b"a2 " + imap.COMPRESS_REFUSED


def test_synchronising_literal_waits_for_the_continuation():
    proxy = greeted()
    actions = proxy.feed_client(b"a1 APPEND INBOX {11}\r\na2 STARTTLS")
    assert backend_bytes(actions) == b"a1 APPEND INBOX {11}\r\n"
    actions = proxy.feed_backend(b"+ Ready\r\n")
    assert client_bytes(actions) == b"+ Ready\r\n"
    assert backend_bytes(actions) == b"a2 STARTTLS"  # literal data, not a command
    actions = proxy.feed_client(b"\r\n\r\n")
    assert backend_bytes(actions) == b"\r\n\r\n"
    assert not any(isinstance(a, StartTls) for a in actions)


def test_non_synchronising_literal_passes_at_once():
    proxy = greeted()
    actions = proxy.feed_client(b"a1 APPEND INBOX {12+}\r\na2 STARTTLS\r\n\r\na3 NOOP\r\n")
    assert backend_bytes(actions) == b"a1 APPEND INBOX {12+}\r\na2 STARTTLS\r\n\r\na3 NOOP\r\n"


def test_refused_literal_is_not_sent():
    proxy = greeted()
    proxy.feed_client(b"a1 APPEND INBOX {99999}\r\n")
    proxy.feed_backend(b"a1 NO [TOOBIG] too big\r\n")
    assert StartTls() in proxy.feed_client(b"a2 STARTTLS\r\n")


def test_login_with_literals_stays_out_of_the_log():
    proxy = greeted(log_dialogue=True)
    actions = proxy.feed_client(b"a1 LOGIN {5}\r\n")
    actions += proxy.feed_backend(b"+ go\r\n")
    actions += proxy.feed_client(b"alice {7+}\r\nhunter2\r\n")
    assert backend_bytes(actions) == b"a1 LOGIN {5}\r\nalice {7+}\r\nhunter2\r\n"
    actions += proxy.feed_client(b"a2 LOGIN alice hunter2\r\na3 AUTHENTICATE PLAIN AGFsaWNl\r\n")
    logged = "\n".join(a.text for a in actions if isinstance(a, Log))
    assert "alice" not in logged and "hunter2" not in logged and "AGFsaWNl" not in logged
    assert "C: a2 LOGIN ***" in logged and "C: a3 AUTHENTICATE PLAIN ***" in logged


def test_authenticate_takes_one_line_per_continuation():
    proxy = greeted(log_dialogue=True)
    actions = proxy.feed_client(b"a1 AUTHENTICATE PLAIN\r\nAGFsaWNlAHNlY3JldA==\r\na2 NOOP\r\n")
    assert backend_bytes(actions) == b"a1 AUTHENTICATE PLAIN\r\n"
    actions = proxy.feed_backend(b"+ \r\n")
    assert backend_bytes(actions) == b"AGFsaWNlAHNlY3JldA==\r\n"
    actions += proxy.feed_backend(b"a1 OK done\r\n")
    assert backend_bytes(actions).endswith(b"a2 NOOP\r\n")
    proxy.feed_backend(b"a2 OK\r\n")
    assert "C: ***" in [a.text for a in actions if isinstance(a, Log)]
    assert client_bytes(proxy.feed_client(b"a3 STARTTLS\r\n")) == (
        b"a3 " + imap.STARTTLS_AUTHENTICATED
    )


def test_words_end_at_any_blank_so_a_tab_login_stays_out_of_the_log():
    proxy = greeted(log_dialogue=True)
    actions = proxy.feed_client(b"a1\tLOGIN\talice\thunter2\r\n")
    actions += proxy.feed_client(b"a2  authenticate\tplain\tAGFsaWNl\r\n")
    logged = [a.text for a in actions if isinstance(a, Log)]
    assert logged == ["C: a1 LOGIN ***", "C: a2 AUTHENTICATE PLAIN ***"]
    proxy.feed_backend(b"a1 OK in\r\na2 NO no\r\n")  # a LOGIN: its OK logs the session in
    assert client_bytes(proxy.feed_client(b"a3 STARTTLS\r\n")) == (
        b"a3 " + imap.STARTTLS_AUTHENTICATED
    )


def test_the_server_decides_a_continuation_of_a_command_the_proxy_does_not_know():
    proxy = greeted(log_dialogue=True)
    actions = proxy.feed_client(b"a1 XAUTH PLAIN\r\n")
    actions += proxy.feed_backend(b"+ \r\n")  # so the next line is that command's
    actions += proxy.feed_client(b"a2 NOOP hunter2\r\n")
    assert backend_bytes(actions) == b"a1 XAUTH PLAIN\r\na2 NOOP hunter2\r\n"
    logged = [a.text for a in actions if isinstance(a, Log)]
    assert logged == [
        "C: (16 bytes: not a command this proxy knows)",
        "S: + ",
        "C: ***",
    ]
    proxy.feed_backend(b"a1 OK logged in\r\n")  # an unknown command's OK counts as a login
    assert client_bytes(proxy.feed_client(b"a3 STARTTLS\r\n")) == (
        b"a3 " + imap.STARTTLS_AUTHENTICATED
    )


def test_idle_done():
    proxy = greeted()
    actions = proxy.feed_client(b"a1 IDLE\r\nDONE\r\n")
    assert backend_bytes(actions) == b"a1 IDLE\r\n"
    actions = proxy.feed_backend(b"+ idling\r\n* 4 EXISTS\r\n")
    assert backend_bytes(actions) == b"DONE\r\n"
    actions = proxy.feed_client(b"a2 STARTTLS\r\n")
    assert actions == []
    actions = proxy.feed_backend(b"a1 OK IDLE done\r\n")
    assert StartTls() in actions


@pytest.mark.parametrize(
    "line, found",
    [
        (b"a1 APPEND x {5}\r\n", (5, True)),
        (b"a1 APPEND x {5+}\n", (5, False)),
        (b"a1 APPEND x ~{0}\r\n", (0, True)),
        (b"a1 SEARCH TEXT {5} x\r\n", None),
        (b"a1 NOOP\r\n", None),
    ],
)
def test_literal_announcement(line, found):
    assert literal(line) == found


def test_client_line_bound_ends_the_session():
    proxy = greeted()
    exact = b"a1 NOOP " + b"x" * (imap.MAX_LINE - 10) + b"\r\n"
    assert backend_bytes(proxy.feed_client(exact)) == exact
    proxy = greeted()
    actions = proxy.feed_client(b"x" * imap.MAX_LINE)
    assert client_bytes(actions) == imap.LINE_TOO_LONG and isinstance(actions[-1], Close)


def test_backend_line_bound():
    proxy = greeted()
    assert proxy.feed_backend(b"* " + b"x" * (imap.MAX_LINE - 2)) == []
    actions = proxy.feed_backend(b"x")
    assert client_bytes(actions) == imap.BACKEND_LINE_TOO_LONG and isinstance(actions[-1], Close)


def test_backend_line_bound_holds_for_a_whole_line_too():
    line = b"* " + b"x" * (imap.MAX_LINE - 2)
    assert client_bytes(greeted().feed_backend(line + b"\n")) == line + b"\n"
    actions = greeted().feed_backend(line + b"x\n")
    assert client_bytes(actions) == imap.BACKEND_LINE_TOO_LONG and isinstance(actions[-1], Close)


def test_pipelining_bound():
    proxy = greeted()
    commands = b"".join(b"a%d NOOP\r\n" % n for n in range(imap.MAX_PENDING + 1))
    forwarded = backend_bytes(proxy.feed_client(commands))
    assert forwarded.count(b"\n") == imap.MAX_PENDING
    assert backend_bytes(proxy.feed_backend(b"a0 OK\r\n")) == b"a1000 NOOP\r\n"


def test_eofs():
    proxy = greeted()
    actions = proxy.feed_client(b"a1 LOGOUT\r\na2 NO")
    actions += proxy.feed_client(b"")
    assert backend_bytes(actions) == b"a1 LOGOUT\r\n" and actions[-1] == ToBackend(b"")
    actions = proxy.feed_backend(b"* BYE\r\na1 OK bye\r\n* cut")
    actions += proxy.feed_backend(b"")
    assert client_bytes(actions) == b"* BYE\r\na1 OK bye\r\n* cut"
    assert ToClient(b"") in actions and isinstance(actions[-1], Close)
