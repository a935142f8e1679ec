"""The default policy in the three layers: no credential before TLS (issue #15), and
STARTTLS not offered. Whole sessions are in tests/transcripts (*_before_tls.*,
no_starttls.*, required_unavailable.*, plaintext_auth.*); these are the rules'
edges the transcripts do not show."""

import pytest

from stunnel3.layers import imap, pop3, smtp_text
from stunnel3.layers.imap import ImapProxy, rewrite_capabilities
from stunnel3.layers.pop3 import Pop3Proxy
from stunnel3.layers.protocol import Close, StartTls, TlsInfo, ToBackend, ToClient
from stunnel3.layers.smtp_reply import Reply, rewrite_ehlo
from stunnel3.smtp import SmtpProxy

TLS = TlsInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", 128)


def client_bytes(actions):
    return b"".join(a.data for a in actions if isinstance(a, ToClient))


def backend_bytes(actions):
    return b"".join(a.data for a in actions if isinstance(a, ToBackend))


def test_the_ehlo_rewrite_drops_auth_where_it_may_not_be_used():
    reply = Reply(
        (b"250-vm\r\n", b"250-AUTH PLAIN LOGIN\r\n", b"250-AUTH=LOGIN\r\n", b"250 HELP\r\n")
    )
    assert rewrite_ehlo(reply, True, offer_auth=False).raw == (
        b"250-vm\r\n250-STARTTLS\r\n250 HELP\r\n"
    )
    assert rewrite_ehlo(reply, False).raw == reply.raw


def test_the_capability_rewrite_says_logindisabled_once_and_drops_mechanisms():
    words = b"IMAP4rev1 AUTH=PLAIN LOGINDISABLED SASL-IR auth=login STARTTLS"
    assert rewrite_capabilities(words, True, login_disabled=True) == (
        b"IMAP4rev1 SASL-IR STARTTLS LOGINDISABLED"
    )
    # the backend's own LOGINDISABLED is the backend's truth when logins may pass
    assert (
        rewrite_capabilities(words, False)
        == b"IMAP4rev1 AUTH=PLAIN LOGINDISABLED SASL-IR auth=login"
    )


def test_an_implicit_tls_client_gets_no_tls_where_none_is_offered():
    proxy = SmtpProxy(offer_tls=False)
    proxy.feed_client(b"\x16\x03\x01")
    assert proxy.feed_backend(b"220 vm\r\n") == [ToClient(b"220 vm\r\n")]


def test_required_tls_refuses_logins_even_for_a_client_allowed_plaintext():
    proxy = SmtpProxy(require_tls=True, plaintext_auth=True)
    proxy.feed_backend(b"220 vm\r\n")
    proxy.feed_client(b"EHLO x\r\n")
    shown = client_bytes(proxy.feed_backend(b"250-vm\r\n250 AUTH PLAIN\r\n"))
    assert shown == b"250-vm\r\n250 STARTTLS\r\n"
    assert client_bytes(proxy.feed_client(b"AUTH PLAIN eA==\r\n")) == smtp_text.MUST_STARTTLS
    proxy.feed_client(b"NOOP\r\n")  # the backend decides: a 334 to it asks for SASL data
    proxy.feed_backend(b"334 go\r\n")
    assert backend_bytes(proxy.feed_client(b"c2VjcmV0\r\n")) == b"*\r\n"


def test_after_tls_auth_is_offered_and_forwarded():
    proxy = SmtpProxy()
    proxy.feed_backend(b"220 vm\r\n")
    proxy.feed_client(b"EHLO x\r\n")
    proxy.feed_backend(b"250 vm\r\n")
    assert StartTls() in proxy.feed_client(b"STARTTLS\r\n")
    proxy.feed_backend(b"250 reset\r\n")
    proxy.tls_started(TLS)
    proxy.feed_client(b"EHLO x\r\n")
    assert client_bytes(proxy.feed_backend(b"250-vm\r\n250 AUTH PLAIN\r\n")) == (
        b"250-vm\r\n250 AUTH PLAIN\r\n"
    )
    assert backend_bytes(proxy.feed_client(b"auth plain eA==\r\n")) == b"auth plain eA==\r\n"
    proxy.feed_backend(b"334 \r\n")
    assert backend_bytes(proxy.feed_client(b"c2VjcmV0\r\n")) == b"c2VjcmV0\r\n"


def test_a_refused_login_with_a_synchronising_literal_is_over():
    # RFC 9051 section 7.5: the client waits for `+`, gets NO, and sends no literal
    proxy = ImapProxy()
    proxy.feed_backend(b"* OK ready\r\n")
    actions = proxy.feed_client(b"a1 LOGIN {5}\r\na2 NOOP\r\n")
    assert client_bytes(actions) == b"a1 " + imap.LOGIN_NEEDS_TLS
    assert backend_bytes(actions) == b"a2 NOOP\r\n"


@pytest.mark.parametrize(
    "layer, greeting, refusal",
    [
        (SmtpProxy, b"220 vm\r\n", smtp_text.TLS_REQUIRED_UNAVAILABLE),
        (ImapProxy, b"* OK ready\r\n", imap.TLS_REQUIRED_UNAVAILABLE),
        (Pop3Proxy, b"+OK ready\r\n", pop3.TLS_REQUIRED_UNAVAILABLE),
    ],
)
def test_tls_required_and_not_offered_ends_the_session_at_once(layer, greeting, refusal):
    proxy = layer(require_tls=True, offer_tls=False)
    actions = proxy.start()
    assert actions[-2] == ToClient(refusal) and isinstance(actions[-1], Close)
    assert proxy.feed_backend(greeting) == [] and proxy.feed_client(b"x\r\n") == []


@pytest.mark.parametrize("layer", [SmtpProxy, ImapProxy, Pop3Proxy])
def test_nothing_but_a_refusal_is_said_to_starttls_where_it_is_not_offered(layer):
    proxy = layer(offer_tls=False, plaintext_auth=True)
    greeting = {SmtpProxy: b"220 vm\r\n", ImapProxy: b"* OK\r\n", Pop3Proxy: b"+OK\r\n"}[layer]
    proxy.feed_backend(greeting)
    if layer is SmtpProxy:
        proxy.feed_client(b"EHLO x\r\n")
        proxy.feed_backend(b"250 vm\r\n")
    command = b"a1 STARTTLS\r\n" if layer is ImapProxy else b"STLS\r\n"
    command = b"STARTTLS\r\n" if layer is SmtpProxy else command
    actions = proxy.feed_client(command + b"NOOP\r\n")  # no injection: it is refused
    assert not any(isinstance(a, (StartTls, Close)) for a in actions)
    assert client_bytes(actions).startswith(
        (smtp_text.TLS_NOT_AVAILABLE, b"a1 " + imap.STARTTLS_NOT_OFFERED, pop3.STLS_NOT_OFFERED)
    )
