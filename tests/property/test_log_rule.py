"""One rule for every logged byte (log.printable, issue #18 item 11), over all inputs.

3.22's safestring() turned each byte of its dialogue that C's isprint() refused,
in the C locale (3.22 never called setlocale), into '.'. Our layers hand the
dialogue to the log one character a byte (Latin-1), and every other line is
text; whatever comes, a line is printable ASCII with no line break in it.
"""

import ctypes

from hypothesis import given
from hypothesis import strategies as st

from stunnel3.log import TEXT_MAX, format_line, printable

_libc = ctypes.CDLL(None)
# glibc's isprint() as 3.22 called it: the C locale, a byte at a time
C_ISPRINT = [bool(_libc.isprint(byte)) for byte in range(256)]


def safestring(data: bytes) -> bytes:
    """What 3.22 wrote for these dialogue bytes."""
    return bytes(byte if C_ISPRINT[byte] else ord(".") for byte in data)


def logged_text(level: int, text: str) -> str:
    return format_line(level, text).split("]: ", 1)[1]


def test_c_isprint_in_the_c_locale_is_printable_ascii():
    assert [byte for byte in range(256) if C_ISPRINT[byte]] == list(range(0x20, 0x7F))


@given(st.binary(max_size=600))
def test_a_dialogue_line_is_what_322_wrote(data):
    shown = logged_text(7, "C: " + data.decode("latin-1"))
    assert shown == ("C: " + safestring(data).decode("ascii"))[:TEXT_MAX]


@given(st.text(max_size=600))
def test_any_line_is_printable_ascii_on_one_line(text):
    shown = logged_text(5, text)
    assert shown.isascii() and shown.isprintable()
    assert len(shown) == min(len(text), TEXT_MAX)
    assert all(a == b or b == "." for a, b in zip(text, shown, strict=False))


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300))
def test_printable_ascii_passes_unchanged(text):
    assert printable(text) == text
