"""SmtpProxy.awaiting (protocol.py): when an SMTP command/reply exchange is under way,
which the relay bounds (STUNNEL3_EXCHANGE_TIMEOUT, issue #18). Message data is none."""

from stunnel3.layers import smtp_text as text
from stunnel3.layers.protocol import TlsInfo
from stunnel3.smtp import SmtpProxy

TLS = TlsInfo("TLSv1.3", "TLS_AES_128_GCM_SHA256", 128)


def greeted() -> SmtpProxy:
    proxy = SmtpProxy()
    proxy.start()
    assert proxy.awaiting  # the greeting is owed
    proxy.feed_backend(b"220 vm\r\n")
    assert not proxy.awaiting
    proxy.feed_client(b"EHLO x\r\n")
    assert proxy.awaiting
    proxy.feed_backend(b"250 vm\r\n")
    assert not proxy.awaiting
    return proxy


def test_a_command_begins_with_its_first_byte_and_ends_with_its_reply():
    proxy = greeted()
    proxy.feed_client(b"N")  # a client that sends a byte a second
    assert proxy.awaiting
    proxy.feed_client(b"OOP\r\n")
    assert proxy.awaiting  # forwarded: the reply is owed
    proxy.feed_backend(b"250 ok\r\n")
    assert not proxy.awaiting


def test_pipelined_commands_are_awaited_until_the_last_reply():
    proxy = greeted()
    proxy.feed_client(b"NOOP\r\nNOOP\r\nNOOP\r\n")
    proxy.feed_backend(b"250 ok\r\n250 ok\r\n")
    assert proxy.awaiting
    proxy.feed_backend(b"250 ok\r\n")
    assert not proxy.awaiting


def test_message_data_is_no_exchange_but_its_end_is():
    proxy = greeted()
    proxy.feed_client(b"MAIL FROM:<a@b>\r\n")
    proxy.feed_backend(b"250 ok\r\n")
    proxy.feed_client(b"RCPT TO:<c@d>\r\n")
    proxy.feed_backend(b"250 ok\r\n")
    proxy.feed_client(b"DATA\r\n")
    assert proxy.awaiting
    proxy.feed_backend(b"354 go\r\n")
    assert not proxy.awaiting
    proxy.feed_client(b"Subject: slow\r\n\r\nbody, a line a minute\r\n")
    assert not proxy.awaiting
    proxy.feed_client(b".\r\n")
    assert proxy.awaiting  # the reply to the end of the data
    proxy.feed_backend(b"250 queued\r\n")
    assert not proxy.awaiting


def test_the_rest_of_a_line_too_long_is_awaited_while_it_is_dropped():
    proxy = greeted()
    proxy.feed_client(b"x" * text.MAX_LINE)
    assert proxy.awaiting  # answered 500, and the line's end has not come
    proxy.feed_client(b"x" * 100)
    assert proxy.awaiting
    proxy.feed_client(b"\r\n")
    assert not proxy.awaiting


def test_local_replies_end_their_exchange_at_once():
    proxy = greeted()
    proxy.feed_client(b"BDAT 10 LAST\r\n")  # refused by the proxy: 502, 10 bytes skipped
    assert proxy.awaiting
    proxy.feed_client(b"0123456789")
    assert not proxy.awaiting


def test_the_handshake_has_its_own_bound_and_the_reset_after_it_is_awaited():
    proxy = greeted()
    proxy.feed_client(b"STARTTLS\r\n")
    assert not proxy.awaiting  # STUNNEL3_HANDSHAKE_TIMEOUT's
    proxy.tls_started(TLS)
    assert proxy.awaiting  # our RSET's reply
    proxy.feed_backend(b"250 reset\r\n")
    assert not proxy.awaiting
