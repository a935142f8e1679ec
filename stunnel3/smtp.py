"""SMTP STARTTLS proxy (-n smtp-, -n smtp): a sans-I/O state machine.

STUB: the interface the relay drives (see protocol.py); the SMTP issue fills it in.
"""

from stunnel3.protocol import Action, TlsInfo


class SmtpProxy:
    """require_tls: -n smtp (530 until STARTTLS); False for -n smtp- (plaintext fallback)."""

    def __init__(self, require_tls: bool = False, log_dialogue: bool = False):
        self.require_tls = require_tls
        self.log_dialogue = log_dialogue

    def start(self) -> list[Action]:
        raise NotImplementedError

    def feed_client(self, data: bytes) -> list[Action]:
        raise NotImplementedError

    def feed_backend(self, data: bytes) -> list[Action]:
        raise NotImplementedError

    def tls_started(self, info: TlsInfo) -> list[Action]:
        raise NotImplementedError
