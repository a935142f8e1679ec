"""A property over random command lines: ours and the real 3.22 end the same way.

Every line starts with `-p missing.pem`, so that a line both accept ends at the
pem's check (3.22's first step after the log opens) instead of serving; what
is compared is the exit status and the first error line (masked and
normalised as compare.py says), wherever it went: stderr, an -o file, syslog.

The words are 3.22's options (the sg2 letters are ours to define: the oracle
refuses them), each with values drawn for it, plus unknown letters, clusters,
`-`, `--` and operands. Values that meet a deliberate difference are left out
of the draw (ports over 65535, `-D mail.`), since test_command_line holds
those one by one.
"""

from hypothesis import given, settings
from hypothesis import strategies as st

from oracle.compare import normalise

THREE_22 = "A:a:cp:v:d:fTl:L:r:s:g:t:u:n:N:hC:D:O:E:R:WB:VP:S:o:I:"
FLAGS = [c for i, c in enumerate(THREE_22) if c != ":" and THREE_22[i + 1 : i + 2] != ":"]
NUMBERS = ["0", "1", "2", "3", "4", "-1", "x", "2abc", " 7"]
VALUES = {
    "d": ["127.0.0.1:25", "localhost:smtp", "0", "x", "127.0.0.1:", ":25", "nosuch.invalid:25"],
    "r": ["25", "127.0.0.1:25", "localhost:25", "0", "smtp", ":25", "nosuch.invalid:1"],
    "I": ["127.0.0.1", "localhost", "", "nosuch.invalid"],
    "D": ["7", "0", "3", "debug", "mail.info", "authpriv.7", "nosuch.5", "9", ".7", "ntp.1"],
    "O": [
        "a:SO_KEEPALIVE=1",
        "r:SO_LINGER=1:5",
        "l:IP_TTL=9",
        "a:SO_NOSUCH=1",
        "q:SO_DEBUG=1",
        "a",
        "a:TCP_MAXSEG=9",
        "r:SO_BINDTODEVICE=lo",
    ],  # fmt: skip
    "v": NUMBERS,
    "S": NUMBERS,
    "t": NUMBERS,
    "B": NUMBERS,
    "n": ["smtp", "pop3", "nntp", "ftp", ""],
    "l": ["/bin/true", "/nonexistent"],
    "L": ["/bin/true"],
    "p": ["missing.pem", "other.pem"],
    "o": ["out.log", "/nonexistent/out.log"],
}
GENERIC = ["x", "-", "--", "-f", "-Q", "nobody", "missing", "/nonexistent"]


@st.composite
def word(draw) -> list[str]:
    kind = draw(st.integers(0, 5))
    if kind == 0:
        return ["-" + draw(st.sampled_from(FLAGS))]
    if kind == 1:  # an option and its value, separate or attached
        letter = draw(st.sampled_from(sorted(VALUES) + list("AasguNCERP")))
        value = draw(st.sampled_from(VALUES.get(letter, GENERIC)))
        return [f"-{letter}{value}"] if value and draw(st.booleans()) else [f"-{letter}", value]
    if kind == 2:  # a cluster of flags, maybe ending in one that takes a value
        flags = draw(st.lists(st.sampled_from([f for f in FLAGS if f not in "hV"]), max_size=3))
        return ["-" + "".join(flags) + draw(st.sampled_from(["", "c", "D7", "t0", "Q", "v9"]))]
    if kind == 3:
        return [draw(st.sampled_from(["-Q", "-x", "-:", "--help", "-", "--", "-h", "-V"]))]
    if kind == 4:
        return [draw(st.sampled_from(["prog", "argv0", "25", "-c"]))]
    return ["-" + draw(st.sampled_from(list("rlcfd")))]  # modes, maybe missing a value


lines = st.lists(word(), max_size=6).map(lambda words: [w for ws in words for w in ws])


def first_error(outcome) -> str | None:
    return next((line.text for line in normalise(outcome.log) if line.level <= 3), None)


@settings(max_examples=120)
@given(lines)
def test_exit_status_and_first_error_are_322s(pair, argv):
    oracle, ours = pair.both(["-p", "missing.pem", *argv])
    assert (ours.status, first_error(ours)) == (oracle.status, first_error(oracle)), argv
