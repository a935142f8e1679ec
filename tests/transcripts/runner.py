"""Replay a transcript through its layer and render what came out, in the same notation.

A transcript is a whole session as a person reads it (STYLE item 12); its file's
suffix names the layer: .smtp SmtpProxy, .imap ImapProxy, .pop3 Pop3Proxy. Lines:

    # comment, blank lines        kept as they are
    ! require_tls | plaintext_auth | no_starttls | log | no_received
                  options for the layer (before any input): TLS required, credentials
                  allowed before TLS, STARTTLS not offered, the debug log, (SMTP) no
                  Received: line
    C> EHLO x     the client sends "EHLO x\\r\\n"       C: raw   the client sends raw bytes
    B> 250 ok     the backend sends "250 ok\\r\\n"      B: raw   the backend sends raw bytes
    C> EOF / B> EOF   that side closes
    == TLS        the relay reports that the handshake asked for is done

and, rendered from the actions after each input (the expectations):

    C< line / C= raw / C< EOF     the client receives (ToClient)
    B< line / B= raw / B< EOF     the backend receives (ToBackend)
    == STARTTLS [early=raw]       StartTls
    == CLOSE reason               Close
    L< text                       Log (only with `! log`)

raw uses \\r \\n \\\\ \\xNN escapes, and {{a*300}} for 300 a's (long lines).
Data actions that follow each other for the same side are joined, then split
after each LF; a piece that is one clean CRLF line is written `X< line`, anything
else `X= raw`. The test renders the whole file anew from its inputs and
compares: a transcript is its own expected output.
"""

import re

from stunnel3.layers.imap import ImapProxy
from stunnel3.layers.pop3 import Pop3Proxy
from stunnel3.layers.protocol import Close, Log, StartTls, TlsInfo, ToBackend, ToClient
from stunnel3.smtp import SmtpProxy

LAYERS = {
    ".smtp": (SmtpProxy, {"clock": lambda: 1700000000}),
    ".imap": (ImapProxy, {}),
    ".pop3": (Pop3Proxy, {}),
}
# `! word`: the layer's keyword argument and its value.
OPTIONS = {
    "log": ("log_dialogue", True),
    "require_tls": ("require_tls", True),
    "plaintext_auth": ("plaintext_auth", True),
    "no_starttls": ("offer_tls", False),
    "no_received": ("received_header", False),
}

TLS_INFO = TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256)
REPEAT = re.compile(r"\{\{([A-Za-z0-9])\*(\d+)\}\}")  # {{a*300}}: 300 a's
RUN = re.compile(r"([A-Za-z0-9])\1{63,}")
INPUTS = ("C> ", "C: ", "B> ", "B: ", "== TLS")
OUTPUTS = ("C< ", "C= ", "B< ", "B= ", "== STARTTLS", "== CLOSE", "L< ")


def escape(data: bytes) -> str:
    out = []
    for byte in data:
        char = chr(byte)
        if char == "\\":
            out.append("\\\\")
        elif char == "\r":
            out.append("\\r")
        elif char == "\n":
            out.append("\\n")
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\x{byte:02x}")
    return collapse("".join(out))


def unescape(text: str) -> bytes:
    text = REPEAT.sub(lambda m: m.group(1) * int(m.group(2)), text)
    return text.encode("latin-1").decode("unicode_escape").encode("latin-1")


def collapse(text: str) -> str:
    return RUN.sub(lambda m: f"{{{{{m.group(1)}*{len(m.group(0))}}}}}", text)


def render_data(side: str, data: bytes) -> list[str]:
    if not data:
        return [f"{side}< EOF"]
    lines = []
    for piece in data.splitlines(keepends=True):
        body = piece[:-2]
        clean = piece.endswith(b"\r\n") and not any(c in body for c in b"\r\n")
        clean = clean and all(0x20 <= c < 0x7F for c in body) and body != b"EOF"
        clean = clean and not RUN.search(body.decode())
        if clean:
            lines.append(f"{side}< {body.decode()}".rstrip(" "))  # an empty line: `C<`
        else:
            lines.append(f"{side}= {escape(piece)}")
    return lines


def render(actions, with_log: bool) -> list[str]:
    lines: list[str] = []
    run_side, run = "", b""

    def flush():
        nonlocal run_side, run
        if run_side:
            lines.extend(render_data(run_side, run))
        run_side, run = "", b""

    for action in actions:
        if isinstance(action, (ToClient, ToBackend)):
            side = "C" if isinstance(action, ToClient) else "B"
            if side != run_side or not action.data or (run_side and not run):
                flush()
            if not action.data:
                lines.append(f"{side}< EOF")
                continue
            run_side, run = side, run + action.data
            continue
        flush()
        if isinstance(action, StartTls):
            lines.append("== STARTTLS" + (f" early={escape(action.early)}" if action.early else ""))
        elif isinstance(action, Close):
            lines.append(f"== CLOSE {action.reason}")
        elif isinstance(action, Log) and with_log:
            lines.append(f"L< {action.text}")
    flush()
    return lines


def replay(text: str, suffix: str = ".smtp") -> str:
    """The transcript as the proxy really behaves: inputs kept, outputs rendered."""
    layer_class, defaults = LAYERS[suffix]
    options = dict(defaults)
    proxy = None
    out: list[str] = []
    for line in text.splitlines():
        if line.startswith(OUTPUTS) or line in ("C<", "B<"):
            continue
        if line in ("C>", "B>"):  # an empty line: editors strip the trailing space
            line += " "
        out.append(line.rstrip(" "))
        if line.startswith("! "):
            options.update(OPTIONS[word] for word in line[2:].split())
            continue
        if not line.startswith(INPUTS):
            continue
        logged = bool(options.get("log_dialogue"))
        if proxy is None:
            proxy = layer_class(**options)
            out.extend(render(proxy.start(), logged))
        if line == "== TLS":
            actions = proxy.tls_started(TLS_INFO)
        else:
            payload = line[3:]
            data = b"" if payload == "EOF" and line[1] == ">" else None
            if data is None:
                data = payload.encode() + b"\r\n" if line[1] == ">" else unescape(payload)
            feed = proxy.feed_client if line[0] == "C" else proxy.feed_backend
            actions = feed(data)
        out.extend(render(actions, logged))
    return "\n".join(out) + "\n"
