"""The jail: sg2's -/ (chroot), -s/-g (uid/gid), -i, in a fixed, checked order.

STUB (does nothing yet): the signatures the service calls; the privilege-drop issue fills
them in.
"""

from dataclasses import dataclass

from stunnel3.options import Options


class SetupError(Exception):
    """A setup step failed; `text` is the log line, the exit status is 1."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text


@dataclass(frozen=True)
class Ids:
    uid: int | None  # -s, resolved to a number before the jail
    gid: int | None  # -g


def resolve_ids(options: Options) -> Ids:
    """Names -> numbers, while /etc/passwd and /etc/group are still reachable."""
    return Ids(None, None)


def enter_jail(options: Options, ids: Ids, log) -> None:
    """chroot(-/) + chdir("/"), then setgroups([gid]), setgid, setuid; each step checked."""


def seed_random(options: Options, log) -> None:
    """-R/-B/-W/-E: read the seed file (inside the jail), rewrite it unless -W."""
