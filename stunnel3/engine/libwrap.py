"""TCP wrappers, as a libwrap build of 3.22 checked them: hosts_access(5) per client.

Distributions built 3.22 with libwrap (`stunnel -V` said PTHREAD+LIBWRAP), and
administrators relied on /etc/hosts.deny naming its service. So do we, with
the system's own library (Debian's libwrap0) through ctypes:

- Each connection whose descriptor is a socket is checked under the service
  name (-N made safe, see options.py), 3.22's way: request_init(RQ_DAEMON,
  name, RQ_FILE, fd), fromhost() (sock_host in the library), hosts_access().
  Inetd mode checks the peer of fd 0, daemon mode every accepted connection.
- Refused: `Connection from <ip>:<port> REFUSED by libwrap` (warning), `See
  hosts_access(5) for details` (debug), and the connection is dropped.
- hosts_access reads /etc/hosts.allow and /etc/hosts.deny at every check, so
  the library is loaded before any jail (the jail holds no libraries), and
  inetd mode checks fd 0 before the chroot too. A daemon under -/ checks its
  clients inside the jail: there the library reads the jail's etc/hosts.allow
  and etc/hosts.deny, as every chrooted libwrap program does.
- Without the library nothing claims TCP wrappers: one warning at start-up
  says so instead of 3.22's `Using '<name>' as tcpwrapper service name`, and
  `-V` leaves out +LIBWRAP.

The library is opened when this module is imported, so that a process forked
from the warm helper (which imports every module) finds it open already.
"""

import ctypes

LIBRARY = "libwrap.so.0"
RQ_FILE = 1  # tcpd.h
RQ_DAEMON = 2
# struct request_info is under 1 KiB in every libwrap (tcpd.h: an fd, four
# 128-byte strings, two host_info and a few pointers); room to spare.
REQUEST_SIZE = 4096


def _open() -> ctypes.CDLL | None:
    try:
        library = ctypes.CDLL(LIBRARY)
        for name in ("request_init", "sock_host", "hosts_access"):
            getattr(library, name)
    except (OSError, AttributeError):
        return None
    library.sock_host.restype = None
    library.hosts_access.restype = ctypes.c_int
    return library


_library = _open()


def available() -> bool:
    return _library is not None


def allows(fd: int, service: str) -> bool:
    """hosts_access(5) for the peer of socket fd under service; True without libwrap."""
    if _library is None:
        return True
    request = ctypes.create_string_buffer(REQUEST_SIZE)
    name = service.encode(errors="surrogateescape")
    _library.request_init(request, RQ_DAEMON, name, RQ_FILE, ctypes.c_int(fd), ctypes.c_int(0))
    _library.sock_host(request)  # tcpd.h: #define fromhost sock_host
    return bool(_library.hosts_access(request))


def startup_line(service: str) -> tuple[int, str]:
    """(level, text) of the first line after the log opens: 3.22's, or why not."""
    if _library is not None:
        return 5, f"Using '{service}' as tcpwrapper service name"
    return 4, (
        f"TCP wrappers are not in use: {LIBRARY} is not installed, so /etc/hosts.allow "
        f"and /etc/hosts.deny are not read (service name '{service}')"
    )


def refusal_lines(peer: tuple[str, int]) -> list[tuple[int, str]]:
    """3.22's lines for a client that hosts_access refused."""
    return [
        (4, f"Connection from {peer[0]}:{peer[1]} REFUSED by libwrap"),
        (7, "See hosts_access(5) for details"),
    ]
