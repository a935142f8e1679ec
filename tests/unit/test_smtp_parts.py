"""Unit tests of the SMTP proxy's parts: reply framing, the EHLO rewrite, the DATA
scanner, command splitting, log redaction and the Received: line."""

import pytest

from stunnel3.layers.protocol import Close, TlsInfo, ToClient
from stunnel3.layers.smtp_command import received_line, shown, split_command
from stunnel3.layers.smtp_data import MessageData
from stunnel3.layers.smtp_reply import Reply, ReplyReader, keyword, rewrite_ehlo
from stunnel3.layers.smtp_text import BACKEND_LINE_TOO_LONG, MAX_LINE
from stunnel3.smtp import SmtpProxy


def reply(*lines: str) -> Reply:
    return Reply(tuple(line.encode() + b"\r\n" for line in lines))


def framed(*chunks: bytes) -> list[bytes]:
    """The replies SmtpProxy frames from the backend's bytes (line_proxy.LineProxy splits
    and bounds the lines, ReplyReader makes replies of them): each reaches the
    client as one ToClient (the greeting, then unsolicited ones)."""
    proxy = SmtpProxy()
    return [
        action.data
        for chunk in chunks
        for action in proxy.feed_backend(chunk)
        if isinstance(action, ToClient)
    ]


def bounded(data: bytes) -> bool:
    """True if the proxy took these backend bytes without ending the session."""
    proxy = SmtpProxy()
    proxy.feed_backend(b"220 vm\r\n")
    actions = proxy.feed_backend(data)
    if any(isinstance(a, Close) for a in actions):
        assert actions[0] == ToClient(BACKEND_LINE_TOO_LONG)
        return False
    return True


# -- ReplyReader ------------------------------------------------------------------


def test_multiline_reply_is_one_reply_byte_for_byte():
    reader = ReplyReader()
    assert reader.add(b"250-vm\r\n") is None and reader.add(b"250-SIZE 10\r\n") is None
    whole = Reply((b"250-vm\r\n", b"250-SIZE 10\r\n", b"250 HELP\r\n"))
    assert reader.add(b"250 HELP\r\n") == whole
    assert framed(b"250-vm\r\n250-SIZE 10\r\n250 HELP\r\n") == [
        b"250-vm\r\n250-SIZE 10\r\n250 HELP\r\n"
    ]


def test_replies_split_at_every_byte():
    data = b"220-a\r\n220 b\r\n250 ok\n354 go\r\n"
    replies = framed(*(data[i : i + 1] for i in range(len(data))))
    assert replies == [b"220-a\r\n220 b\r\n", b"250 ok\n", b"354 go\r\n"] == framed(data)


def test_a_line_that_is_not_a_continuation_ends_the_reply():
    reply_250 = ReplyReader().add(b"250\r\n")
    assert reply_250 is not None and reply_250.positive
    garbage = ReplyReader().add(b"garbage\r\n")
    assert garbage is not None and garbage.raw == b"garbage\r\n"


def test_leftover_is_an_unfinished_reply():
    reader = ReplyReader()
    assert reader.add(b"250-a\r\n") is None
    assert reader.leftover() == b"250-a\r\n"
    assert reader.leftover() == b""


def test_backend_line_length_bound_at_and_over():
    assert bounded(b"2" * MAX_LINE)
    assert not bounded(b"2" * (MAX_LINE + 1))


def test_backend_line_length_bound_holds_for_a_whole_line_too():
    # one read may bring a whole long line: the bound must not depend on the split
    assert bounded(b"250 " + b"x" * (MAX_LINE - 5) + b"\r\n")
    assert not bounded(b"250 " + b"x" * (MAX_LINE - 4) + b"\r\n")


# -- the EHLO rewrite ---------------------------------------------------------------


def test_keyword():
    assert keyword(b"250-AUTH=LOGIN PLAIN\r\n") == b"AUTH"
    assert keyword(b"250 size 100\r\n") == b"SIZE"


def test_ehlo_starttls_added_before_last_line_and_untracked_removed():
    backend = reply(
        "250-vm",
        "250-SIZE 5",
        "250-CHUNKING",
        "250-STARTTLS",
        "250-PRDR",
        "250-BINARYMIME",
        "250-XFOO",
        "250-PIPELINING",
        "250 HELP",
    )
    assert rewrite_ehlo(backend, True).raw == (
        b"250-vm\r\n250-SIZE 5\r\n250-PIPELINING\r\n250-STARTTLS\r\n250 HELP\r\n"
    )
    assert (
        rewrite_ehlo(backend, False).raw
        == b"250-vm\r\n250-SIZE 5\r\n250-PIPELINING\r\n250 HELP\r\n"
    )


def test_ehlo_last_line_dropped_means_new_last_line():
    backend = reply("250-vm", "250-AUTH=LOGIN PLAIN", "250 CHUNKING")
    assert rewrite_ehlo(backend, False).raw == b"250-vm\r\n250 AUTH=LOGIN PLAIN\r\n"
    assert rewrite_ehlo(backend, True).raw == b"250-vm\r\n250-STARTTLS\r\n250 AUTH=LOGIN PLAIN\r\n"


def test_ehlo_single_line():
    assert rewrite_ehlo(reply("250 vm"), True).raw == b"250-vm\r\n250 STARTTLS\r\n"
    assert rewrite_ehlo(reply("250 vm"), False).raw == b"250 vm\r\n"


# -- MessageData --------------------------------------------------------------------


def feed_all(chunks):
    message = MessageData()
    out = b""
    for chunk in chunks:
        data, rest = message.feed(chunk)
        out += data
        if rest is not None:
            return out, rest, message
    return out, None, message


@pytest.mark.parametrize(
    "body, forwarded",
    [
        (b"a\r\n.\r\n", b"a\r\n.\r\n"),
        (b".\r\n", b".\r\n"),  # an empty message: the start of the data is a line start
        (b"a\n.\nb\r\n.\r\n", b"a\n..\nb\r\n.\r\n"),
        (b"a\r\n.\nb\r\n.\r\n", b"a\r\n..\nb\r\n.\r\n"),
        (b"a\n.\r\nb\r\n.\r\n", b"a\n..\r\nb\r\n.\r\n"),
        (b".\nb\r\n.\r\n", b"..\nb\r\n.\r\n"),
        (b"a\r.\rb\r\n.\r\n", b"a\r.\rb\r\n.\r\n"),  # bare CR ends no line anywhere
        (b"..\r\n.x\r\n.\r\r\n.\r\n", b"..\r\n.x\r\n.\r\r\n.\r\n"),
    ],
)
def test_only_crlf_dot_crlf_ends_and_ambiguous_dot_lines_are_stuffed(body, forwarded):
    whole = feed_all([body + b"NEXT"])
    assert whole[:2] == (forwarded, b"NEXT")
    bytewise = feed_all([body[i : i + 1] for i in range(len(body))] + [b"NEXT"])
    assert bytewise[0] == forwarded and bytewise[1] in (b"", b"NEXT")


def test_bulk_without_line_start_dots_passes_as_is():
    chunk = b"x" * 65536 + b"\r\n"
    data, rest = MessageData().feed(chunk)
    assert data is chunk and rest is None


def test_a_trailing_dot_is_held_then_flushed_at_eof():
    message = MessageData()
    assert message.feed(b"a\r\n.") == (b"a\r\n", None)
    assert message.feed(b"\r") == (b"", None)
    assert message.flush() == b".\r"
    assert message.size == 3


def test_counts():
    _, _, message = feed_all([b"a\n.\nb\r\n", b".\r\n"])
    assert (message.size, message.stuffed) == (10, 1)


# -- commands, log, Received: ----------------------------------------------------------


def test_split_command():
    assert split_command(b"mail FROM:<a>\r\n") == (b"MAIL", b"FROM:<a>")
    assert split_command(b"STARTTLS \n") == (b"STARTTLS", b"")
    assert split_command(b"Quit") == (b"QUIT", b"")


def test_a_verb_ends_at_any_blank_a_backend_ends_it_at():
    # exim strips trailing white space (DATA<TAB> is DATA); mailfront splits at TAB
    assert split_command(b"DATA\t\r\n") == (b"DATA", b"")
    assert split_command(b"auth\tPLAIN  x\r\n") == (b"AUTH", b"PLAIN  x")
    assert split_command(b" \tMAIL\x0bFROM:<a> \r\n") == (b"MAIL", b"FROM:<a>")
    assert split_command(b"\r\n") == (b"", b"")


def test_the_log_never_shows_an_auth_argument():
    assert shown(b"AUTH", b"PLAIN AGFsaWNl", b"auth PLAIN AGFsaWNl\r\n") == b"AUTH PLAIN ***"
    assert shown(b"AUTH", b"plain\tAGFsaWNl", b"AUTH\tplain\tAGFsaWNl\r\n") == b"AUTH PLAIN ***"
    assert shown(b"AUTH", b"LOGIN", b"AUTH LOGIN\r\n") == b"AUTH LOGIN"
    # only a registered mechanism is named: the first word may be anything
    assert shown(b"AUTH", b"AGFsaWNl", b"AUTH AGFsaWNl\r\n") == b"AUTH ***"
    assert shown(b"MAIL", b"FROM:<a>", b"MAIL FROM:<a>\r\n") == b"MAIL FROM:<a>"


def test_the_log_shows_a_line_it_does_not_know_only_by_its_size():
    assert shown(b"C2VJCMV0", b"", b"c2VjcmV0\r\n") == b"(10 bytes: not a command this proxy knows)"
    assert shown(b"AUTH\x00PLAIN", b"x", b"AUTH\x00PLAIN x\n").startswith(b"(13 bytes")


def test_received_line():
    info = TlsInfo("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256", 128)
    assert received_line(info, False, 0) == (
        b"Received: (stunnel3 STARTTLS proxy) with ESMTPS"
        b" (TLSv1.2 cipher=ECDHE-RSA-AES128-GCM-SHA256 bits=128);\r\n"
        b"\tThu, 01 Jan 1970 00:00:00 +0000\r\n"
    )
    assert b" with ESMTPSA " in received_line(info, True, 1700000000)
    assert b"Tue, 14 Nov 2023 22:13:20 +0000" in received_line(info, True, 1700000000)
