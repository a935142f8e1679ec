"""stunnel 3.22 (+ sg2) command line -> one frozen Options.

parse(argv) never prints and never exits: errors are OptionError, carrying the
log text of 3.22 and its exit code; -h and -V come back as Options.show.

Rules, as 3.22's options.c applied them (differences are marked where made):
- C getopt over OPTSTRING (see scan); each option is judged when getopt meets
  it, so the first bad option in argv wins, and -h/-V win only if met first.
- Numbers are C atoi (`-v x` is 0); ports are /etc/services names or 1..65535,
  a bad one is `Invalid port: <port>`, exit 2; other errors exit 1 with the hint.
- After the loop: a plaintext end is required (-r, -l/-L, or sg2's -F).
- Operands are the -l program's argv; their first word names the service.
- Names (-s, -g, hosts) stay strings: the jail and the engine resolve them.
Only light modules are imported: a process starts for every connection.
"""

from stunnel3.cgetopt import OPTSTRING, OptionError, getopt, scan  # noqa: F401  (re-exported)
from stunnel3.record import record


@record(frozen=True)
class Address:
    host: str | None  # None: the option's default (any address for -d, 127.0.0.1 for -r)
    port: int


@record(frozen=True)
class SocketOption:
    where: str  # "a" accept, "l" local, "r" remote
    name: str  # "SO_KEEPALIVE", "TCP_NODELAY", ...
    value: tuple[int, ...]  # flag/int: (v,); SO_LINGER: (onoff, linger); *TIMEO: (sec, usec)
    text: str | None = None  # SO_BINDTODEVICE: the interface name (3.22's TYPE_STRING)


@record(frozen=True)
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
    # No flag: makesock sets it (STUNNEL3_FIXCRIO_FD) when it left out the fixcrio
    # behind -F; the relay then adds fixcrio's CRs both ways on -F itself.
    plaintext_add_cr: bool = False


PROTOCOLS = ("smtp", "pop3", "nntp", "smtp-", "pop3-", "imap-")  # 3.22's, then sg2's
LEVEL_NAMES = ("emerg", "alert", "crit", "err", "warning", "notice", "info", "debug")
# 3.22's -D facility names (authpriv and ftp: the ones Linux adds).
FACILITY_NAMES = (
    "auth", "authpriv", "cron", "daemon", "ftp", "kern", "lpr", "mail", "news", "syslog",
    "user", "uucp", "local0", "local1", "local2", "local3", "local4", "local5", "local6",
    "local7",
)  # fmt: skip
# 3.22's -O table: name -> value kind (flag and int take one number; linger and
# timeval a number and an optional second; string an interface name).
SOCKET_OPTIONS = dict(
    entry.split("=")
    for entry in """SO_DEBUG=flag SO_DONTROUTE=flag SO_KEEPALIVE=flag SO_LINGER=linger
    SO_OOBINLINE=flag SO_RCVBUF=int SO_SNDBUF=int SO_RCVLOWAT=int SO_SNDLOWAT=int
    SO_RCVTIMEO=timeval SO_SNDTIMEO=timeval SO_REUSEADDR=flag SO_BINDTODEVICE=string
    IP_TOS=int IP_TTL=int TCP_MAXSEG=int TCP_NODELAY=flag""".split()
)
DEFAULT_PID_DIR = "/var/run/"  # 3.22's PIDDIR: -P dir/ names stunnel.<service>.pid in it
USAGE_HINT = "Try 'stunnel -h' for more information."


def atoi(text: str) -> int:
    """C atoi: leading blanks, a sign, digits up to the first non-digit; else 0.

    3.22 read -v, -S, -t, -B and -O values with atoi, so `-v x` is level 0.
    (No `re` here: it would add milliseconds to every connection's start.)
    """
    rest = text.lstrip(" \t\n\v\f\r")
    sign = 1
    if rest[:1] in ("+", "-"):
        sign = -1 if rest[0] == "-" else 1
        rest = rest[1:]
    digits = 0
    while digits < len(rest) and "0" <= rest[digits] <= "9":
        digits += 1
    return sign * int(rest[:digits]) if digits else 0


def parse_debug(text: str) -> tuple[str | None, int]:
    """-D [facility.]level -> (facility or None, level); names in any case.

    Like 3.22's strtok: empty pieces between dots are skipped, and what follows
    the level is ignored (`mail..info.x` is mail.info).
    """
    facility = None
    level_text = text
    if "." in text:
        pieces = [piece for piece in text.split(".") if piece]
        if len(pieces) < 2 or pieces[0].lower() not in FACILITY_NAMES:
            raise OptionError(f"Illegal debug argument: {text}", usage_hint=True)
        facility, level_text = pieces[0].lower(), pieces[1]
    if len(level_text) == 1 and "0" <= level_text <= "7":
        return facility, int(level_text)
    if level_text.lower() in LEVEL_NAMES:
        return facility, LEVEL_NAMES.index(level_text.lower())
    raise OptionError(f"Illegal debug argument: {text}", usage_hint=True)


def parse_socket_option(text: str) -> SocketOption:
    """-O a|l|r:NAME=value[:value2], with 3.22's names and atoi values."""
    bad = OptionError(f"Illegal socket option: {text}", usage_hint=True)
    if len(text) < 2 or text[1] != ":" or text[0] not in "alr":
        raise bad
    name, equals, value = text[2:].partition("=")
    kind = SOCKET_OPTIONS.get(name)
    if not equals or kind is None:
        raise bad
    if kind in ("flag", "int"):
        return SocketOption(text[0], name, (atoi(value),))
    if kind == "string":
        if len(value.encode()) + 1 > 16:  # 3.22 kept it in a 16-byte union
            raise bad
        return SocketOption(text[0], name, (), value)
    first, _, second = value.partition(":")
    return SocketOption(text[0], name, (atoi(first), atoi(second)))


def parse_address(text: str, status_on_bad_port: int = 2) -> Address:
    """-d/-r [host:]port; the host may be `[v6]` or a bare v6 address (`::1:25`).

    3.22 split at the last ':' and took the port from /etc/services or atoi;
    a zero port logged `Invalid port: <port>` and exited 2. We take only
    1..65535 (3.22's u_short let 65561 wrap to 25). Host names stay names: the
    engine resolves them.
    """
    host, colon, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    port = _port_number(port_text)
    if port is None:
        raise OptionError(f"Invalid port: {port_text}", status=status_on_bad_port)
    return Address(host if colon else None, port)


def _port_number(text: str) -> int | None:
    if text.isascii() and text.isdigit():
        number = int(text)
        return number if 0 < number < 65536 else None
    if not text:
        return None
    import socket  # only for a service name such as `smtp`: numbers cost nothing

    try:
        return socket.getservbyname(text, "tcp")
    except (OSError, UnicodeError):
        return None


def parse(argv: list[str]) -> Options:
    """argv without the program name -> Options (C getopt semantics, 3.22's checks)."""
    found: dict = {}
    operands: list[str] = []
    for letter, argument in scan(argv, operands):
        if letter in "hV":  # 3.22 printed and exited inside the getopt loop
            return Options(show="help" if letter == "h" else "version")
        _HANDLERS[letter](found, argument)
    return _finish(found, operands)


def _finish(found: dict, operands: list[str]) -> Options:
    """3.22's checks after the loop, then the service name and the program's argv."""
    ends = [key for key in ("remote", "local_program", "plaintext_fd") if key in found]
    if not ends:
        raise OptionError("Either -r, -l (or -L) option must be used", usage_hint=True)
    if "daemon" in found and "remote" in found and "local_program" in found:
        raise OptionError("-d, -r and -l (or -L) options are not allowed together", usage_hint=True)
    if len(ends) > 1:
        # 3.22 let -r and -l be given together outside daemon mode; one plaintext
        # end is what the spec asks, and -F (sg2) is one more.
        raise OptionError("Only one of -r, -l (or -L) and -F may be used", usage_hint=True)
    # 3.22: operands are the -l program's argv, and their first word (argv[0])
    # names the service; without operands the program gets [service name].
    found["program_args"] = tuple(operands)
    name = found.pop("named", None)
    if name is None and operands:
        name = operands[0]
    if name is None:
        name = found.pop("derived_name", None)
    found.pop("derived_name", None)
    found["service_name"] = name if name is not None else "stunnel"
    return Options(**found)


def service_name(options: Options) -> str:
    """The name in log lines, the pid file and TCP wrappers (-N, else derived)."""
    return options.service_name or "stunnel"


def program_argv(options: Options) -> list[str]:
    """What the -l/-L program is exec'd with: the operands, else [service name]."""
    return list(options.program_args) or [service_name(options)]


def pid_path(options: Options) -> str | None:
    """-P: None for `none`; `dir/` -> dir/stunnel.<service>.pid; else the file."""
    where = options.pid_file if options.pid_file is not None else DEFAULT_PID_DIR
    if where == "none":
        return None
    if where.endswith("/"):
        return f"{where}stunnel.{service_name(options)}.pid"
    return where


def _once(found: dict, key: str, message: str) -> None:
    if key in found:
        raise OptionError(message, usage_hint=True)


def _range(text: str, low: int, high: int, message: str) -> int:
    value = atoi(text)
    if not low <= value <= high:
        raise OptionError(message, usage_hint=True)
    return value


def _verify(found: dict, text: str) -> None:
    found["verify_level"] = _range(text, 0, 3, "Bad verify level")


def _sources(found: dict, text: str) -> None:
    found["cert_defaults"] = _range(text, 0, 3, f"Bad -S value '{atoi(text)}'")


def _timeout(found: dict, text: str) -> None:
    # 3.22 refused only 0; a negative cache timeout makes no sense either
    found["session_timeout"] = _range(text, 1, 2**31 - 1, f"Illegal session timeout: {text}")


def _rand_bytes(found: dict, text: str) -> None:
    found["rand_bytes"] = _range(text, 0, 2**31 - 1, f"Illegal number of random bytes: {text}")


def _daemon(found: dict, text: str) -> None:
    _once(found, "daemon", "Multiple -d not allowed")
    found["daemon"] = parse_address(text)


def _remote(found: dict, text: str) -> None:
    _once(found, "remote", "Multiple -r not allowed")
    found["remote"] = parse_address(text)
    found["derived_name"] = text.replace(":", ".")  # 3.22's safename


def _program(found: dict, text: str, pty: bool) -> None:
    _once(found, "local_program", "Multiple -l or -L not allowed")
    found["local_program"] = text
    found["local_pty"] = pty
    found["derived_name"] = text.rsplit("/", 1)[-1]


def _debug(found: dict, text: str) -> None:
    facility, found["debug_level"] = parse_debug(text)
    if facility is not None:
        found["debug_facility"] = facility


def _protocol(found: dict, text: str) -> None:
    if text not in PROTOCOLS:
        raise OptionError(f"Unsupported protocol: {text}", usage_hint=True)
    found["protocol"] = text


def _fd(found: dict, text: str) -> None:
    if not (text.isascii() and text.isdigit()):
        raise OptionError(f"Illegal file descriptor: {text}", usage_hint=True)
    found["plaintext_fd"] = int(text)


def _pid(found: dict, text: str) -> None:
    if not text:
        raise OptionError("Illegal pid file: (empty)", usage_hint=True)
    found["pid_file"] = text


def _local_ip(found: dict, text: str) -> None:
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if not text:
        raise OptionError("Illegal local address: (empty)", usage_hint=True)
    found["local_ip"] = text


def _store(key: str, value=None):
    def handler(found: dict, text: str) -> None:
        found[key] = text if value is None else value

    return handler


def _add_socket_option(found: dict, text: str) -> None:
    found["socket_options"] = found.get("socket_options", ()) + (parse_socket_option(text),)


_HANDLERS = {
    "A": _store("ca_file"),
    "a": _store("ca_dir"),
    "c": _store("client", True),
    "p": _store("pem"),
    "v": _verify,
    "d": _daemon,
    "f": _store("foreground", True),
    "T": _store("transparent", True),
    "l": lambda found, text: _program(found, text, pty=False),
    "L": lambda found, text: _program(found, text, pty=True),
    "r": _remote,
    "s": _store("setuid_user"),
    "g": _store("setgid_group"),
    "t": _timeout,
    "u": _store("ident_user"),
    "n": _protocol,
    "N": _store("named"),
    "C": _store("cipher_list"),
    "D": _debug,
    "O": _add_socket_option,
    "E": _store("egd_socket"),
    "R": _store("rand_file"),
    "W": _store("rand_no_write", True),
    "B": _rand_bytes,
    "P": _pid,
    "S": _sources,
    "o": _store("output_file"),
    "I": _local_ip,
    "/": _store("chroot_dir"),
    "i": _store("switch_ids_now", True),
    "F": _fd,
}
