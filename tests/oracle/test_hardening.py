"""Issue #18 side by side with the real 3.22: what the log makes of a peer's bytes
(the same)."""

import socket
import threading

# A greeting with UTF-8, control bytes, a DEL, a tab and a Latin-1 byte; LF alone ends
# it (3.22's reader kept a CR, and the dot it made of it, where ours strips the line end).
GREETING = "220 empfänger \x01\x7f\tok é ".encode() + b"\xe9\xff\n"


class Greeter(threading.Thread):
    """One greeting, then EOF, to each of `count` connections (the smtp client of -c)."""

    def __init__(self, count: int):
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(20)
        self.port = self.listener.getsockname()[1]
        self.count = count
        self.start()

    def run(self):
        with self.listener:
            for _ in range(self.count):
                try:
                    conn, _ = self.listener.accept()
                except OSError:
                    return
                with conn:
                    conn.sendall(GREETING)


def test_the_dialogues_bytes_are_logged_as_322_logged_them(pair):
    greeter = Greeter(2)
    argv = ["-f", "-D", "7", "-c", "-n", "smtp", "-r", f"127.0.0.1:{greeter.port}"]
    received = {}
    for which in ("oracle", "ours"):
        outcome = pair.run(which, argv)
        received[which] = [line.text for line in outcome.log if line.text.startswith(" <- ")]
    greeter.join(20)
    assert received["oracle"][:1] == [" <- 220 empf..nger ...ok .. .."]
    assert received["ours"][:1] == received["oracle"][:1]
