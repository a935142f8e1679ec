"""Setup errors: what ends stunnel's start-up with one log line (or a few) and exit status 1.

Every step of SPEC §2's order of operations that can fail before the first byte
is served raises a SetupError (service.serve logs its `text`, line by line, and
returns 1): a name that is no account (chroot.py), a chroot or setuid that fails
(chroot.py), a pid file or a listening socket that cannot be made (daemon.py), a
pem, key or CA that cannot be used (tls.ContextError), a STUNNEL3_ setting that
cannot be used (bounds.SettingError), a mode the options cannot serve
(service.py). An error of one connection is not one of these: it is
session.SessionError, and the connection is dropped.

This module imports only os: bounds.py (makesock's keeper loads it) must stay cheap.
"""

import os


class SetupError(Exception):
    """A setup step failed; `text` is the log line (one or more lines), the exit status is 1."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


def os_error(what: str, error: OSError) -> SetupError:
    """3.22's ioerror(): `<what>: <strerror> (<errno>)`."""
    code = error.errno if error.errno is not None else 0
    return SetupError(f"{what}: {os.strerror(code)} ({code})")
