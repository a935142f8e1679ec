"""Line ends of the plaintext side: fixcrio's rule, as the relay applies it in fixcrio's place.

ucspi-tcp's fixcrio (SPEC §4) puts a CR before each LF that does not follow a
CR, both ways between its peer and its program, and removes nothing; "the last
byte was a CR" carries across reads. `add_cr` is that rule on one read;
`CrAdder` keeps its state for one direction. fixcrio.py pumps with it. The relay
is given a `FixcrioRule` for its plaintext side when makesock has left fixcrio
out of PROG2 (makesock.without_fixcrio -> stunnel.main(argv, fixcrio_fd) ->
service.serve -> session -> Relay), and applies it to the bytes that cross that
descriptor, which are the ones fixcrio would have seen; without one, the relay
leaves line ends as they are.

Imports nothing: fixcrio runs on every connection.
"""

_LF, _CR = 0x0A, 0x0D


def add_cr(data: bytes, after_cr: bool) -> tuple[bytes, bool]:
    """Insert CR before each LF not preceded by CR; return the bytes and the new state.

    after_cr says whether the byte before `data` (from the previous read) was
    a CR. Replacing CRLF by LF and then every LF by CRLF leaves exactly one CR
    before each LF and every other byte as it was, in two passes of C code.
    """
    if not data:
        return data, after_cr
    fixed = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    if after_cr and data[0] == _LF:
        fixed = fixed[1:]  # the previous read's last byte is this LF's CR
    return fixed, data[-1] == _CR


class CrAdder:
    """One direction of fixcrio's rule, with its state."""

    __slots__ = ("after_cr",)

    def __init__(self) -> None:
        self.after_cr = False

    def __call__(self, data: bytes) -> bytes:
        fixed, self.after_cr = add_cr(data, self.after_cr)
        return fixed


class FixcrioRule:
    """fixcrio's rule on the plaintext side, both ways: what the relay writes to it
    (`outgoing`) and what it reads from it (`incoming`), each with its own state."""

    __slots__ = ("incoming", "outgoing")

    def __init__(self) -> None:
        self.outgoing = CrAdder()
        self.incoming = CrAdder()
