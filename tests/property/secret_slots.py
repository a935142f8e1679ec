"""Dialogues with secrets in them, for the properties that no secret leaks.

A dialogue is a list of (side, parts): "C" client, "B" backend, "T" the handshake
is done; parts are bytes and Secret slots, rendered with the secrets drawn for
them (or, for the "public" run a property compares with, as many #s).
"""

import base64

from hypothesis import strategies as st

from stunnel3.layers.protocol import Log, StartTls, TlsInfo, ToBackend

TLS = TlsInfo("TLSv1.3", "TLS_AES_256_GCM_SHA384", 256)

BLANKS = st.lists(st.sampled_from([b" ", b"\t"]), min_size=1, max_size=3).map(b"".join)
MAYBE_BLANKS = st.one_of(st.just(b""), BLANKS)
# Raw secrets hold no line end, are not all blanks (that would be no secret at all),
# and do not end like an IMAP literal's announcement.
SECRET = st.binary(min_size=6, max_size=40).filter(
    lambda s: not set(s) & set(b"\r\n{") and s.strip(b" \t\x0b\x0c") != b""
)


def cases(*words: bytes):
    """Each word in upper, lower and two mixed cases."""
    variants = set()
    for word in words:
        variants |= {word.upper(), word.lower(), word.title(), word.swapcase().title().swapcase()}
    return st.sampled_from(sorted(variants))


class Secret:
    """A slot in a dialogue: the secret drawn for it, sent raw or as base64."""

    def __init__(self, index: int, encoded: bool):
        self.index, self.encoded = index, encoded

    def render(self, secrets: list[bytes]) -> bytes:
        secret = secrets[self.index]
        return base64.b64encode(secret) if self.encoded else secret


class Size:
    """A slot for the length of a rendered secret (an IMAP literal's n)."""

    def __init__(self, secret: Secret):
        self.secret = secret

    def render(self, secrets: list[bytes]) -> bytes:
        return b"%d" % len(self.secret.render(secrets))


@st.composite
def secret_slot(draw, secrets: list, encoded: bool | None = None):
    """A new secret; sent as base64 if encoded (drawn if None)."""
    secrets.append(draw(SECRET))
    return Secret(len(secrets) - 1, draw(st.booleans()) if encoded is None else encoded)


def render(parts, secrets) -> bytes:
    return b"".join(part if isinstance(part, bytes) else part.render(secrets) for part in parts)


def play(proxy, dialogue, secrets) -> tuple[bytes, bytes, bytes]:
    """Play the dialogue with these secrets: (what the backend got before StartTls,
    what it got after, the log's lines)."""
    before: list[bytes] = []
    after: list[bytes] = []
    log: list[str] = []
    started = False
    for side, parts in dialogue:
        if side == "T":
            actions = proxy.tls_started(TLS)
        else:
            feed = proxy.feed_client if side == "C" else proxy.feed_backend
            actions = feed(render(parts, secrets))
        for action in actions:
            started = started or isinstance(action, StartTls)
            if isinstance(action, ToBackend):
                (after if started else before).append(action.data)
            elif isinstance(action, Log):
                log.append(action.text)
    return b"".join(before), b"".join(after), "\n".join(log).encode("latin-1")
