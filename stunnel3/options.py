"""stunnel 3.22 (+ sg2) command line -> one frozen Options.

parse(argv) never prints and never exits: errors are OptionError, carrying the
log text of 3.22 and its exit code; -h and -V come back as Options.show.

Rules, as the real 3.22 applies them (tests/oracle runs it; differences are
marked where made, and docs/migration.md lists them):
- glibc getopt over OPTSTRING (cgetopt.scan: it permutes); each option is
  judged when getopt meets it, so the first bad option in argv wins, and -h/-V
  win only if met first.
- Numbers are C atoi into an int (`-v x` is 0, `-t -5` is -5); only -t 0 is
  refused, and -v and -S outside 0..3.
- Ports are /etc/services names or 1..65535 in digits; else `Invalid port:
  <port>`, exit 2 (3.22 kept atoi's value in 16 bits: 65537 was port 1).
- Hosts of -r, -d and -I are resolved as getopt meets them, when parse() is
  given a resolver (stunnel's main gives one; makesock and the unit tests do
  not), so a bad name fails the command line with exit 1.
- -n takes any word: a protocol the engine lacks fails each connection, as in
  3.22.
- After the loop: a plaintext end is required (-r, -l/-L, or sg2's -F); -r
  and -l together are 3.22's (the -l program is the local side), but not with
  -d; -F stands alone.
- The service name is 3.22's: -l's base name, else -r's argument made safe;
  then the first operand; then -N made safe (every byte that is not a letter
  or a digit becomes '.': `smtp-tls` is `smtp.tls`).
- Operands are the -l program's argv.
- Names of -s and -g stay strings: the jail resolves them.
Only light modules are imported: a process starts for every connection.
"""

from collections.abc import Callable

from stunnel3.log import FACILITIES, LEVEL_NAMES
from stunnel3.support.cgetopt import OPTSTRING, OptionError, getopt, scan  # noqa: F401  (re-exported)
from stunnel3.support.record import record


@record(frozen=True)
class Address:
    host: str | None  # None: the option's default (0.0.0.0 for -d, 127.0.0.1 for -r)
    port: int
    resolved: tuple[str, ...] = ()  # the host's addresses, found while parsing


@record(frozen=True)
class SocketOption:
    where: str  # "a" the listening (accepting) socket, "l" the local one, "r" remote
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
    protocol: str | None = None  # -n: smtp, pop3, nntp (3.22), smtp-, pop3-, imap- (sg2)
    service_name: str = "stunnel"  # -N made safe, else derived (see the module doc)
    setuid_user: str | None = None  # -s name or number
    setgid_group: str | None = None  # -g name or number
    pid_file: str | None = None  # -P dir/ | file | none
    rand_file: str | None = None  # -R
    rand_bytes: int = 64  # -B
    rand_no_write: bool = False  # -W
    egd_socket: str | None = None  # -E
    local_ip: str | None = None  # -I, resolved when parsed with a resolver
    daemon: Address | None = None  # -d [host:]port
    foreground: bool = False  # -f
    local_program: str | None = None  # -l
    local_pty: bool = False  # -L (local_program runs on a pty)
    program_args: tuple[str, ...] = ()  # the operands: the -l program's argv
    remote: Address | None = None  # -r [host:]port
    chroot_dir: str | None = None  # -/ (sg2)
    switch_ids_now: bool = False  # -i (sg2)
    plaintext_fd: int | None = None  # -F (sg2)


# -> the host's addresses, or OptionError (stunnel's main passes resolve_host, below)
Resolver = Callable[[str], tuple[str, ...]]

PROTOCOLS = ("smtp", "pop3", "nntp", "smtp-", "pop3-", "imap-")  # 3.22's, then sg2's
# 3.22's -O table on Linux, in its order: name -> value kind (flag and int take
# one number; linger and timeval a number and an optional second; string an
# interface name). No TCP_MAXSEG: 3.22 listed it under `#ifdef IP_MAXSEG`,
# which Linux does not define.
SOCKET_OPTIONS = dict(
    entry.split("=")
    for entry in """SO_DEBUG=flag SO_DONTROUTE=flag SO_KEEPALIVE=flag SO_LINGER=linger
    SO_OOBINLINE=flag SO_RCVBUF=int SO_SNDBUF=int SO_RCVLOWAT=int SO_SNDLOWAT=int
    SO_RCVTIMEO=timeval SO_SNDTIMEO=timeval SO_REUSEADDR=flag SO_BINDTODEVICE=string
    IP_TOS=int IP_TTL=int TCP_NODELAY=flag""".split()
)
# What 3.22's -V printed from the options met before it (its "defaults" were variables)
SHOWN_BY_VERSION = ("session_timeout", "debug_level", "pid_file", "pem", "socket_options")
DEFAULT_PID_DIR = "/var/run/"  # 3.22's PIDDIR: -P dir/ names stunnel.<service>.pid in it
USAGE_HINT = "Try 'stunnel -h' for more information."


def atoi(text: str) -> int:
    """C atoi as glibc has it: strtol's value (blanks, a sign, digits up to the
    first non-digit; else 0), clamped to a long, then kept in a 32-bit int.

    3.22 read -v, -S, -t, -B and -O values with atoi, so `-v x` is level 0 and
    `-v 4294967297` level 1. (No `re` here: it would add milliseconds to every
    connection's start.)
    """
    rest = text.lstrip(" \t\n\v\f\r")
    sign = 1
    if rest[:1] in ("+", "-"):
        sign = -1 if rest[0] == "-" else 1
        rest = rest[1:]
    digits = 0
    while digits < len(rest) and "0" <= rest[digits] <= "9":
        digits += 1
    if not digits:
        return 0
    value = max(-(2**63), min(2**63 - 1, sign * int(rest[:digits])))
    return (value + 2**31) % 2**32 - 2**31


def safename(name: str) -> str:
    """3.22's safename(): every byte that is not an ASCII letter or digit becomes '.'."""
    return "".join(
        chr(byte) if chr(byte).isascii() and chr(byte).isalnum() else "."
        for byte in name.encode(errors="surrogateescape")
    )


def parse_debug(text: str) -> tuple[str | None, int]:
    """-D [facility.]level -> (facility or None, level); names in any case.

    Like 3.22's strtok: empty pieces between dots are skipped, and what follows
    the level is ignored (`mail..info.x` is mail.info). Where 3.22 crashed (a
    facility and no level, `mail.`; only dots) this is the usual error.
    """
    facility = None
    level_text = text
    if "." in text:
        pieces = [piece for piece in text.split(".") if piece]
        if len(pieces) < 2 or pieces[0].lower() not in FACILITIES:
            raise OptionError(f"Illegal debug argument: {text}", usage_hint=True)
        facility, level_text = pieces[0].lower(), pieces[1]
    if len(level_text) == 1 and "0" <= level_text <= "7":
        return facility, int(level_text)
    if level_text.lower() in LEVEL_NAMES:
        return facility, LEVEL_NAMES.index(level_text.lower())
    raise OptionError(f"Illegal debug argument: {text}", usage_hint=True)


def parse_socket_option(text: str) -> SocketOption:
    """-O a|l|r:NAME=value[:value2], with 3.22's names and atoi values.

    3.22 cut its copy of the argument at the '=' before it looked the name up,
    so its error names the option without the value: `a:SO_NOSUCH`.
    """
    name, equals, value = text[2:].partition("=")
    bad = OptionError(f"Illegal socket option: {text[:2]}{name}", usage_hint=True)
    if len(text) < 2 or text[1] != ":" or text[0] not in "alr":
        raise OptionError(f"Illegal socket option: {text}", usage_hint=True)
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


def parse_address(text: str, resolve: Resolver | None = None) -> Address:
    """-d/-r [host:]port; the host may be `[v6]` or a bare v6 address (`::1:25`).

    As 3.22: split at the last ':', the host first (resolved now if there is a
    resolver: an empty one is an error, as gethostbyname("") was), then the
    port: an /etc/services name or 1..65535, else `Invalid port: <port>`, exit 2.
    """
    host, colon, port_text = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    resolved = resolve(host) if colon and resolve is not None else ()
    port = _port_number(port_text)
    if port is None:
        raise OptionError(f"Invalid port: {port_text}", status=2)
    return Address(host if colon else None, port, resolved)


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


def parse(argv: list[str], resolve: Resolver | None = None) -> Options:
    """argv without the program name -> Options (glibc getopt, 3.22's checks).

    `resolve(host)` finds the addresses of -r, -d and -I hosts as getopt meets
    them (an OptionError for a name that does not resolve); without it hosts
    stay names and the engine resolves them.
    """
    found: dict = {"resolve": resolve}
    operands: list[str] = []
    try:
        for letter, argument in scan(argv, operands):
            if letter in "hV":  # 3.22 printed and exited inside the getopt loop
                shown = {key: found[key] for key in SHOWN_BY_VERSION if key in found}
                return Options(show="help" if letter == "h" else "version", **shown)
            _HANDLERS[letter](found, argument)
        del found["resolve"]
        return _finish(found, operands)
    except OptionError as error:
        # 3.22 logged its errors through log(), which the -D level met so far filters
        error.shown = found.get("debug_level", 5) >= 3
        raise


def resolve_host(host: str) -> tuple[str, ...]:
    """3.22's host2num for -r, -d and -I: the host's addresses, or exit 1.

    An empty host is an error, as gethostbyname("") was. (3.22 said
    `gethostbyname: Success (0)`: it printed errno, which the resolver does not
    set; this says what failed.)
    """
    import socket

    try:
        found = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM) if host else []
        reason = "no address"
    except (OSError, UnicodeError) as error:
        found, reason = [], getattr(error, "strerror", None) or str(error)
    if not found:
        raise OptionError(f"Error resolving '{host}': {reason}")
    return tuple(dict.fromkeys(str(entry[4][0]) for entry in found))


def _finish(found: dict, operands: list[str]) -> Options:
    """3.22's checks after the loop, then the service name and the program's argv."""
    if not {"remote", "local_program", "plaintext_fd"} & found.keys():
        raise OptionError("Either -r, -l (or -L) option must be used", usage_hint=True)
    if "daemon" in found and "remote" in found and "local_program" in found:
        raise OptionError("-d, -r and -l (or -L) options are not allowed together", usage_hint=True)
    if "plaintext_fd" in found and {"remote", "local_program"} & found.keys():
        # sg2's -F is the plaintext end itself: there is nothing for -r or -l to be
        raise OptionError("-F, -r and -l (or -L) options are not allowed together", usage_hint=True)
    # 3.22: operands are the -l program's argv, and their first word (argv[0])
    # names the service; then -N, made safe, wins.
    found["program_args"] = tuple(operands)
    if operands:
        found["service_name"] = operands[0]
    named = found.pop("named", None)
    if named is not None:
        found["service_name"] = safename(named)
    return Options(**found)


def service_name(options: Options) -> str:
    """The name in log lines, the pid file and TCP wrappers (see the module doc)."""
    return options.service_name


def program_argv(options: Options) -> list[str]:
    """What the -l/-L program is exec'd with: the operands, else [service name]."""
    return list(options.program_args) or [options.service_name]


def _once(found: dict, key: str, message: str) -> None:
    if key in found:
        raise OptionError(message, usage_hint=True)


def _verify(found: dict, text: str) -> None:
    level = atoi(text)
    if not 0 <= level <= 3:
        raise OptionError("Bad verify level", usage_hint=True)
    found["verify_level"] = level


def _sources(found: dict, text: str) -> None:
    value = atoi(text)
    if not 0 <= value <= 3:
        raise OptionError(f"Bad -S value '{value}'", usage_hint=True)
    found["cert_defaults"] = value


def _timeout(found: dict, text: str) -> None:
    # 3.22 refused only 0: a negative timeout makes every session expire at once
    value = atoi(text)
    if value == 0:
        raise OptionError(f"Illegal session timeout: {text}", usage_hint=True)
    found["session_timeout"] = value


def _daemon(found: dict, text: str) -> None:
    _once(found, "daemon", "Multiple -d not allowed")
    found["daemon"] = parse_address(text, found["resolve"])


def _remote(found: dict, text: str) -> None:
    _once(found, "remote", "Multiple -r not allowed")
    if "local_program" not in found:  # 3.22: -l's name stays when -r comes after it
        found["service_name"] = safename(text)
    found["remote"] = parse_address(text, found["resolve"])


def _program(found: dict, text: str, pty: bool) -> None:
    _once(found, "local_program", "Multiple -l or -L not allowed")
    found["local_program"] = text
    found["local_pty"] = pty
    found["service_name"] = text.rsplit("/", 1)[-1]


def _debug(found: dict, text: str) -> None:
    try:
        facility, found["debug_level"] = parse_debug(text)
    except OptionError:
        # 3.22 set its level to 8 ("illegal") once the facility had passed, so
        # that its own error line went out whatever -D came before
        pieces = [piece for piece in text.split(".") if piece]
        if "." not in text or (len(pieces) >= 2 and pieces[0].lower() in FACILITIES):
            found["debug_level"] = 8
        raise
    if facility is not None:
        found["debug_facility"] = facility


def _fd(found: dict, text: str) -> None:
    if not (text.isascii() and text.isdigit()):
        raise OptionError(f"Illegal file descriptor: {text}", usage_hint=True)
    found["plaintext_fd"] = int(text)


def _local_ip(found: dict, text: str) -> None:
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    resolve = found["resolve"]
    found["local_ip"] = resolve(text)[0] if resolve is not None else text


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
    "n": _store("protocol"),
    "N": _store("named"),
    "C": _store("cipher_list"),
    "D": _debug,
    "O": _add_socket_option,
    "E": _store("egd_socket"),
    "R": _store("rand_file"),
    "W": _store("rand_no_write", True),
    "B": lambda found, text: found.__setitem__("rand_bytes", atoi(text)),
    "P": _store("pid_file"),
    "S": _sources,
    "o": _store("output_file"),
    "I": _local_ip,
    "/": _store("chroot_dir"),
    "i": _store("switch_ids_now", True),
    "F": _fd,
}
