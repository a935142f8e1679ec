"""The texts of -h and -V: 3.22's layout and synopsis, sg2's options added.

docopt-ng carries the option list of -h: the lines under the synopsis are in
its option-description form (`-x arg` then two spaces and the text), and
`documented_options()` reads them back with docopt-ng, so a test holds -h and
options.OPTSTRING to each other (every letter documented, with or without an
argument). docopt-ng cannot parse the command line itself without bending
3.22's getopt rules, see options.scan:
  - `-n --` is "-n requires argument" for docopt, the argument `--` for getopt;
  - `-1` is a positional number for docopt, an illegal option for getopt;
  - `--x` is a long option for docopt, the illegal letter '-' for getopt;
  - docopt collects operands from anywhere (unless options_first) and reports
    errors with its own words and status, not "Illegal option: 'x'", exit 1,
    at the first bad option in argv order with -h/-V winning only if earlier;
  - repeated options (-d twice, -l then -L) are judged per occurrence by 3.22.
The synopsis is 3.22's own (`{ -l | -L }`, `[-- args]`), which is not a
docopt usage pattern either; and importing docopt-ng (and `re`) on every
connection would cost start-up time. So docopt-ng runs only for -h checks.
"""

import os
import sys

from stunnel3 import __version__
from stunnel3.options import DEFAULT_PID_DIR, SOCKET_OPTIONS, Options

SYNOPSIS = """
stunnel\t[-h] [-V] [-c | -T] [-D level] [-C cipherlist] [-p pemfile]
\t[-v level] [-A certfile] [-a directory] [-S sources] [-t timeout]
\t[-u ident_username] [-s setuid_user] [-g setgid_group] [-n protocol]
\t[-R randfile] [-E egdsock] [-B bytes] [-W] [-P { dir/ | filename | none } ]
\t[-N name] [-o file] [-O a|l|r:option=value[:value]] [-I host]
\t[-/ chroot_dir] [-i]
\t[-d [host:]port [-f] ]
\t[-r [host:]port | { -l | -L }  program [-- args] | -F fd ]
"""

OPTION_LINES = """
  -h               show this help
  -V               show the version, what runs it, and the defaults

  -d [host:]port   daemon: listen there (host: any address; [::1]:port for IPv6)
  -r [host:]port   connect to this service (host: 127.0.0.1)
  -l program       run an inetd-style program on a socket pair
  -L program       run the program on a pseudo-terminal
  -F fd            (sg2) the plaintext side is this open descriptor

  -c               client mode: the remote side speaks SSL/TLS
  -f               foreground: do not fork, log to stderr
  -I host          local address for outgoing connections
  -T               transparent proxy (where the system supports it)
  -p pemfile       private key and certificate chain (PEM)
  -v level         verify the peer's certificate
                     level 0: no verification
                     level 1: verify the certificate if there is one
                     level 2: require a valid certificate
                     level 3: require a locally installed certificate
  -a directory     hashed directory of CA certificates for -v
  -A certfile      file of CA certificates for -v
  -S sources       default certificate sources
                     0: none; 1: the SSL library's; 2: stunnel's; 3: both
  -t timeout       session cache timeout, in seconds
  -u user          check the peer's user with IDENT (RFC 1413)
  -n proto         negotiate SSL/TLS inside a protocol
                     3.22: smtp, pop3, nntp
                     sg2 (STARTTLS, plaintext allowed): smtp-, pop3-, imap-
  -N name          service name for logs, the pid file and TCP wrappers
  -s username      setuid() to this user (name or number)
  -g groupname     setgid() to this group (name or number)
  -/ directory     (sg2) chroot() to this directory
  -i               (sg2) change user and group at once, not after bind()
  -P arg           pid file: dir/ | filename | none
  -C list          permitted SSL/TLS ciphers (OpenSSL cipher list)
  -E socket        Entropy Gathering Daemon socket (not asked: OpenSSL 3 seeds itself)
  -B bytes         how many bytes to read from the random seed file
  -R file          random seed file
  -W               do not rewrite the random seed file
  -D [fac.]lev     log level 0-7 or emerg..debug, with a syslog facility
  -O a|l|r:option=value[:value]  set a socket option (accept/local/remote)
  -o file          log to this file (appended) instead of stderr or syslog
"""

HELP = SYNOPSIS + OPTION_LINES + "\nSee stunnel -V output for default values\n\n"


def help_text() -> str:
    return HELP


def documented_options() -> dict[str, int]:
    """-h's option lines as docopt reads them: letter -> argument count."""
    try:
        from docopt import parse_options
    except ImportError:  # docopt 0.6 (Debian's python3-docopt) reads an `options:` section
        from docopt import parse_defaults  # type: ignore[attr-defined]

        found = parse_defaults("options:" + OPTION_LINES)
    else:
        found = parse_options(OPTION_LINES)
    return {option.short[1:]: option.argcount for option in found if option.short}


def platform() -> str:
    """Where we run, in the spirit of 3.22's host triplet (`x86_64-linux`)."""
    system = os.uname()
    return f"{system.machine}-{system.sysname.lower()}"


def runtime() -> str:
    """What really runs: Python, pyOpenSSL, cryptography, and whose OpenSSL (tls_library)."""
    python = ".".join(str(part) for part in sys.version_info[:3])
    try:
        from stunnel3.engine import tls_library

        return f"Python {python}, {tls_library.versions()}"
    except Exception as error:  # -V must still answer when the engine cannot load
        return f"Python {python}, pyOpenSSL unavailable ({type(error).__name__})"


def stunnel_info() -> str:
    """3.22's STUNNEL_INFO line, logged at start-up and first line of -V.

    3.22 said how it ran clients (PTHREAD, or FORK) and +LIBWRAP when it had TCP
    wrappers; we fork, and have them when the system's libwrap is there."""
    from stunnel3.engine import libwrap

    model = "FORK+LIBWRAP" if libwrap.available() else "FORK"
    return f"stunnel 3.22 on {platform()} {model} (stunnel3 {__version__}) with {runtime()}"


def _too_old() -> str:
    """What a session would refuse to start with (tls_library.problem), as a line of -V."""
    try:
        from stunnel3.engine.tls_library import problem

        too_old = problem()
    except Exception:  # noqa: BLE001 - the first line already says what could not load
        return ""
    return f"Unusable: {too_old}\n" if too_old else ""


def version_text(options: Options | None = None) -> str:
    """3.22's print_version, to the byte: -t, -D, -P, -p and -O given before -V show."""
    given = options or Options()
    pid_dir = given.pid_file if given.pid_file is not None else DEFAULT_PID_DIR
    return (
        f"\n{stunnel_info()}\n{_too_old()}\n"
        "Default behaviour:\n"
        "\trun in inetd mode (unless -d used)\n"
        "\trun in background (unless -f used)\n"
        "\trun in ssl server mode (unless -c used)\n"
        "\n"
        "Compile time defaults:\n"
        "\t-v level\tno verify\n"
        "\t-a directory\t(none)\n"
        "\t-A file\t\t(none)\n"
        f"\t-S sources\t{Options.cert_defaults}\n"
        f"\t-t timeout\t{given.session_timeout} seconds\n"
        f"\t-B bytes\t{Options.rand_bytes}\n"
        f"\t-D level\t{given.debug_level}\n"
        f"\t-P pid dir\t{pid_dir}\n"
        f"\t-p pemfile\tin server mode: {given.pem or 'stunnel.pem'}\n"
        "\t\t\tin client mode: none\n"
        "\n" + socket_table(given.socket_options) + "\n"
    )


def _shown(kind: str, value: tuple[int, ...] | None, text: str | None = None) -> str:
    """One column of 3.22's table (its print_option)."""
    if value is None:
        return "    --    "
    if kind == "linger":
        return f"{value[0]}:{value[1]:<8d}"
    if kind == "timeval":
        return f"{value[0]:6d}:{value[1]:<3d}"
    if kind == "string":
        return f"{text or '':>10}"
    return f"{value[0]:10d}"


def socket_table(given=()) -> str:
    """3.22's socket option table: -O values given before -V, and a fresh TCP socket's."""
    import socket
    import struct

    set_by = {(option.where, option.name): option for option in given}
    lines = [
        "Socket option defaults:\n",
        f"\t{'Option':<16}{'Accept':<10}{'Local':<10}{'Remote':<10}{'OS default':<10}\n",
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        for name, kind in SOCKET_OPTIONS.items():
            row = f"\t{name:<16}"
            for where in "alr":
                option = set_by.get((where, name))
                if option is None and (where, name) == ("a", "SO_REUSEADDR"):
                    row += _shown(kind, (1,))  # 3.22's default on the accepting socket
                else:
                    row += _shown(kind, option and option.value, option and option.text)
            level = {"IP": socket.IPPROTO_IP, "TCP": socket.IPPROTO_TCP}.get(
                name.split("_")[0], socket.SOL_SOCKET
            )
            size = {"linger": 8, "timeval": 16, "string": 16}.get(kind, 4)
            try:
                raw = probe.getsockopt(level, getattr(socket, name), size)
            except (OSError, AttributeError):
                lines.append(row + "    --    \n")
                continue
            if kind == "linger":
                row += _shown(kind, struct.unpack("ii", raw))
            elif kind == "timeval":
                row += _shown(kind, struct.unpack("qq", raw))
            elif kind == "string":
                row += _shown(kind, (), raw.split(b"\0")[0].decode(errors="replace"))
            else:
                row += _shown(kind, struct.unpack("i", raw))
            lines.append(row + "\n")
    return "".join(lines)
