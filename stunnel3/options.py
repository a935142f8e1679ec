"""stunnel 3.22 (+ sg2) command line -> one frozen Options.

parse(argv) never prints and never exits: errors are OptionError, carrying the
log text of 3.22 and its exit code; -h and -V come back as Options.show.
"""

from dataclasses import dataclass


class OptionError(Exception):
    """A bad command line. `text` is 3.22's log line, `status` its exit code."""

    def __init__(self, text: str, status: int = 1, usage_hint: bool = False):
        super().__init__(text)
        self.text = text
        self.status = status
        self.usage_hint = usage_hint  # follow with "Try 'stunnel -h' for more information."


@dataclass(frozen=True)
class Address:
    host: str | None  # None: the option's default (any address for -d, 127.0.0.1 for -r)
    port: int


@dataclass(frozen=True)
class SocketOption:
    where: str  # "a" accept, "l" local, "r" remote
    name: str  # "SO_KEEPALIVE", "TCP_NODELAY", ...
    value: tuple[int, ...]


@dataclass(frozen=True)
class Options:
    show: str | None = None  # -h "help", -V "version"
    client: bool = False  # -c
    transparent: bool = False  # -T
    debug_level: int = 5  # -D [facility.]level
    debug_facility: str = "daemon"
    output_file: str | None = None  # -o
    socket_options: tuple[SocketOption, ...] = ()  # -O
    cipher_list: str | None = None  # -C
    pem: str | None = None  # -p; None: "stunnel.pem" in server mode
    verify_level: int | None = None  # -v 0..3
    ca_file: str | None = None  # -A
    ca_dir: str | None = None  # -a
    cert_defaults: int = 2  # -S
    session_timeout: int = 300  # -t
    ident_user: str | None = None  # -u
    protocol: str | None = None  # -n smtp, smtp-, pop3, pop3-, nntp, imap-
    service_name: str | None = None  # -N, else derived (see service())
    setuid_user: str | None = None  # -s name or number
    setgid_group: str | None = None  # -g name or number
    pid_file: str | None = None  # -P dir/ | file | none
    rand_file: str | None = None  # -R
    rand_bytes: int = 64  # -B
    rand_no_write: bool = False  # -W
    egd_socket: str | None = None  # -E
    local_ip: str | None = None  # -I
    daemon: Address | None = None  # -d [host:]port
    foreground: bool = False  # -f
    local_program: str | None = None  # -l
    local_pty: bool = False  # -L (local_program runs on a pty)
    program_args: tuple[str, ...] = ()  # after --: the -l program's argv
    remote: Address | None = None  # -r [host:]port
    chroot_dir: str | None = None  # -/ (sg2)
    switch_ids_now: bool = False  # -i (sg2)
    plaintext_fd: int | None = None  # -F (sg2)


def parse(argv: list[str]) -> Options:
    """argv without the program name -> Options (C getopt semantics)."""
    raise NotImplementedError
