"""Unit tests of SmtpProxy rules the transcripts (tests/transcripts) do not show."""

import pytest

from stunnel3.layers import smtp_text as text
from stunnel3.layers.protocol import Close, StartTls, TlsInfo, ToBackend, ToClient
from stunnel3.smtp import BackendError, ClientError, SmtpError, SmtpProxy

TLS = TlsInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", 128)


def client_bytes(actions):
    return b"".join(a.data for a in actions if isinstance(a, ToClient))


def backend_bytes(actions):
    return b"".join(a.data for a in actions if isinstance(a, ToBackend))


def greeted(**options) -> SmtpProxy:
    proxy = SmtpProxy(**options)
    proxy.start()
    proxy.feed_backend(b"220 vm\r\n")
    proxy.feed_client(b"EHLO x\r\n")
    proxy.feed_backend(b"250 vm\r\n")
    return proxy


def in_tls(**options) -> SmtpProxy:
    proxy = greeted(**options)
    assert StartTls() in proxy.feed_client(b"STARTTLS\r\n")
    assert proxy.feed_backend(b"250 reset\r\n") == []
    proxy.tls_started(TLS)
    proxy.feed_client(b"EHLO x\r\n")
    proxy.feed_backend(b"250 vm\r\n")
    return proxy


def test_error_family_carries_the_reply():
    assert issubclass(ClientError, SmtpError) and issubclass(BackendError, SmtpError)
    error = ClientError(text.STARTTLS_INJECTION)
    assert error.reply == text.STARTTLS_INJECTION
    assert str(error).startswith("421 4.5.0 Commands pipelined after STARTTLS")


def test_pipelining_bound_at_and_over():
    proxy = greeted()
    commands = b"NOOP\r\n" * (text.MAX_PENDING + 1)
    assert backend_bytes(proxy.feed_client(commands)) == b"NOOP\r\n" * text.MAX_PENDING
    assert backend_bytes(proxy.feed_backend(b"250 ok\r\n")) == b"NOOP\r\n"


def test_held_bytes_pause_the_client_then_end_the_session():
    proxy = greeted()
    proxy.feed_client(b"DATA\r\n")  # a stop point: nothing more is parsed until 354
    proxy.feed_client(b"x" * text.PAUSE_HELD)
    assert not proxy.client_paused
    proxy.feed_client(b"x")
    assert proxy.client_paused
    actions = proxy.feed_client(b"x" * text.MAX_HELD)
    assert actions[-2:] == [ToClient(text.TOO_MUCH_PIPELINING), Close(actions[-1].reason)]
    assert proxy.feed_client(b"NOOP\r\n") == [] and proxy.feed_backend(b"354 go\r\n") == []


def test_nothing_is_parsed_before_the_greeting():
    proxy = SmtpProxy()
    assert proxy.feed_client(b"EHLO x\r\n") == []
    assert proxy.feed_backend(b"220 vm\r\n") == [ToClient(b"220 vm\r\n"), ToBackend(b"EHLO x\r\n")]


def test_implicit_tls_needs_a_handshake_record_not_just_bytes():
    proxy = SmtpProxy()
    proxy.feed_client(b"\x16\x03\x01")
    assert proxy.feed_backend(b"220 vm\r\n") == [
        StartTls(early=b"\x16\x03\x01"),
        ToClient(b"220 vm\r\n"),
    ]
    late = SmtpProxy()
    late.feed_backend(b"220 vm\r\n")
    assert StartTls not in map(type, late.feed_client(b"\x16\x03\x01\r\n"))


def test_unsolicited_reply_passes_on():
    proxy = greeted()
    assert proxy.feed_backend(b"421 timeout\r\n") == [ToClient(b"421 timeout\r\n")]


def test_backend_reply_line_too_long_ends_the_session():
    actions = greeted().feed_backend(b"2" * (text.MAX_LINE + 1))
    assert actions[0] == ToClient(text.BACKEND_LINE_TOO_LONG) and isinstance(actions[1], Close)


@pytest.mark.parametrize("verb", [b"TURN", b"atrn", b"XEXCH50 10 2"])
def test_role_reversing_and_blob_commands_are_refused(verb):
    proxy = greeted()
    assert proxy.feed_client(verb + b"\r\n") == [ToClient(text.NOT_IMPLEMENTED)]


def test_bdat_chunk_is_skipped_across_feeds():
    proxy = greeted()
    assert client_bytes(proxy.feed_client(b"BDAT 10 LAST\r\nMAIL ")) == text.BDAT_REFUSED
    assert proxy.feed_client(b"FROM:") == []
    assert proxy.feed_client(b"NOOP\r\n") == [ToBackend(b"NOOP\r\n")]


def test_bdat_without_a_size_ends_the_session():
    actions = greeted().feed_client(b"BDAT LAST\r\nMAIL FROM:<a>\r\n")
    assert actions[0] == ToClient(text.BDAT_BAD_SIZE) and isinstance(actions[1], Close)


def test_rejected_data_leaves_what_follows_as_commands():
    proxy = greeted()
    proxy.feed_client(b"DATA\r\nNOOP\r\n")
    actions = proxy.feed_backend(b"554 no valid recipients\r\n")
    assert actions == [ToClient(b"554 no valid recipients\r\n"), ToBackend(b"NOOP\r\n")]


def test_received_header_can_be_switched_off():
    for option, expected in ((True, True), (False, False)):
        proxy = in_tls(received_header=option, clock=lambda: 0)
        proxy.feed_client(b"DATA\r\n")
        sent = backend_bytes(proxy.feed_backend(b"354 go\r\n"))
        assert sent.startswith(b"Received: ") is expected


def test_no_received_header_without_tls():
    proxy = greeted()
    proxy.feed_client(b"DATA\r\n")
    assert backend_bytes(proxy.feed_backend(b"354 go\r\n")) == b""


def test_sasl_cancel_returns_to_commands():
    proxy = in_tls()
    proxy.feed_client(b"AUTH LOGIN\r\n")
    proxy.feed_backend(b"334 VXNlcm5hbWU6\r\n")
    assert proxy.feed_client(b"*\r\n") == [ToBackend(b"*\r\n")]
    proxy.feed_backend(b"501 cancelled\r\n")
    assert proxy.feed_client(b"STARTTLS\r\n") == [ToClient(text.STARTTLS_TWICE)]


def test_client_bytes_during_the_handshake_wait_for_it():
    proxy = greeted()
    proxy.feed_client(b"STARTTLS\r\n")
    assert proxy.feed_client(b"EHLO x\r\n") == []
    assert proxy.tls_started(TLS) == [ToBackend(b"EHLO x\r\n")]


def test_client_eof_mid_message_flushes_what_was_held():
    proxy = greeted()
    proxy.feed_client(b"DATA\r\n")
    proxy.feed_backend(b"354 go\r\n")
    proxy.feed_client(b"a\r\n.")
    assert proxy.feed_client(b"") == [ToBackend(b"."), ToBackend(b"")]
    assert proxy.feed_client(b"more") == []


def test_backend_eof_passes_an_unfinished_reply_then_closes():
    proxy = greeted()
    proxy.feed_client(b"NOOP\r\n")
    proxy.feed_backend(b"250-a\r\n")
    actions = proxy.feed_backend(b"")
    assert actions[:2] == [ToClient(b"250-a\r\n"), ToClient(b"")] and isinstance(actions[2], Close)


def test_log_is_off_unless_asked():
    proxy = SmtpProxy()
    assert proxy.feed_backend(b"220 vm\r\n") == [ToClient(b"220 vm\r\n")]
