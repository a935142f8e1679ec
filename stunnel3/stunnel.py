"""stunnel's main: argv -> Options -> Log -> the service; exceptions become log lines.

With the warm helper (docs/warm.md), the sh front hands its process over before
any Python starts, and a worker forked from the helper runs `main()` below as
this process would have; without it, `main()` runs here. This module imports
nothing at its top but sys (loaded with the interpreter): makesock runs
it in its own process, and a usage error must stay cheap.

The order of `start()` is 3.22's main(): options are parsed first (hosts of -r,
-d and -I resolved as they are met), their errors on stderr (3.22 set
foreground before parsing, and its -D level already filtered them); -h and -V
print and exit 0; then the log opens as the options say and names the service
(`Using '<name>' as tcpwrapper service name`, notice, when TCP wrappers are
there: see libwrap.py). Only then is the engine imported, so that a usage
error, -h or -V never pays for loading OpenSSL; the engine checks the pem,
makes the TLS context and logs the STUNNEL_INFO line (service.py). This is the
only place where an exception becomes a message and an exit status: no
traceback ever reaches a user.

Exit status: what service.serve returns; 1 for a usage or setup error or an
unexpected exception; 2 for a bad port (options); 3 on SIGINT.
"""

import sys


def main(argv: list[str], fixcrio_fd: int | None = None) -> int:
    """argv[0] is the program name (as in sys.argv); the exit status is returned.

    The front's, makesock's (stunnel in its own process) and the warm worker's.
    fixcrio_fd: makesock's hand-over (makesock.without_fixcrio): it left fixcrio
    out of PROG2, whose end of the pair is this descriptor, because
    serves_plaintext_fd said these arguments serve it as -F: the relay adds
    fixcrio's CRs on it, both ways (line_ends.py)."""
    try:
        return start(argv[1:], fixcrio_fd)
    except KeyboardInterrupt:
        return _interrupted()
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 1
    except BaseException as error:  # noqa: BLE001 - the last net before a traceback
        from stunnel3 import log as logging

        logging.stderr_line(logging.LOG_ERR, _describe(error))
        return 1


def _interrupted() -> int:
    from stunnel3 import log as logging

    logging.stderr_line(logging.LOG_ERR, "Received signal 2; terminating.")
    return 3


def start(args: list[str], fixcrio_fd: int | None = None) -> int:
    """SPEC §2's order up to the engine: options, -h/-V, the log, the library; then serve."""
    from stunnel3 import log as logging
    from stunnel3.options import USAGE_HINT, OptionError, parse, resolve_host

    try:
        options = parse(args, resolve_host)
    except OptionError as error:
        if error.shown:
            logging.stderr_line(logging.LOG_ERR, error.text)
        if error.usage_hint:
            _say(f"\n{USAGE_HINT}\n\n")  # 3.22's print_info(), blank lines included
        return error.status
    if options.show is not None:
        from stunnel3.engine import usage

        _say(usage.help_text() if options.show == "help" else usage.version_text(options))
        return 0
    log = logging.Log.from_options(options)
    try:
        from stunnel3.engine import libwrap

        log.log(*libwrap.startup_line(options.service_name))
        defer_unused(options)
        from stunnel3.engine.tls_library import problem

        too_old = problem()  # before the engine: a library we cannot use fails every session
        if too_old:
            log.err(too_old)
            return 1
        from stunnel3.engine import service  # the engine: only now is the rest of it loaded

        return service.serve(options, log, _line_ends(options, fixcrio_fd))
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as error:
        log.err(_describe(error))
        return 1
    finally:
        log.close()


def serves_plaintext_fd(args: list[str], fd: int) -> bool:
    """Whether these arguments make stunnel serve descriptor fd as -F's plaintext side,
    one session in inetd mode: the last -F is fd (as 3.22 kept it), no -d, -h or -V,
    and C getopt reads them without an error. makesock asks (without_fixcrio) before
    it leaves fixcrio out; the rule is stunnel's, so it is stated here."""
    from stunnel3.support import cgetopt

    try:
        found = dict(cgetopt.getopt(args)[0])
    except cgetopt.OptionError:
        return False
    return found.get("F") == str(fd) and not {"d", "h", "V"} & found.keys()


def _line_ends(options, fixcrio_fd: int | None):
    """fixcrio's rule for -F's descriptor, when makesock handed fixcrio's job over for it."""
    if fixcrio_fd is None or fixcrio_fd != options.plaintext_fd or options.daemon is not None:
        return None
    from stunnel3.engine.line_ends import FixcrioRule

    return FixcrioRule()


def defer_unused(options) -> None:
    """Leave the certificate modules unloaded when these options never use them.
    typing_extensions: only its `deprecated`, as pyOpenSSL uses it (on_demand.py)."""
    from stunnel3.support import on_demand

    if sys.version_info < (3, 13):  # later, pyOpenSSL takes warnings.deprecated
        on_demand.provide("typing_extensions", deprecated=_deprecated)
    if on_demand.uses_certificates(options):
        return
    for name in on_demand.CERTIFICATE_MODULES:
        on_demand.defer(name)


def _deprecated(message: str, /, *, category=DeprecationWarning, stacklevel: int = 1):
    """typing_extensions.deprecated, for pyOpenSSL's own deprecated functions and classes:
    they are left as they are (we call none of them; the real one only adds a warning)."""
    return lambda thing: thing


def _describe(error: BaseException) -> str:
    """An unexpected error as one line: 3.22's `<what>: <strerror> (<errno>)` for OS errors."""
    if isinstance(error, OSError) and error.errno is not None:
        what = error.filename if error.filename is not None else type(error).__name__
        return f"{what}: {error.strerror} ({error.errno})"
    return f"{type(error).__name__}: {error}"


def _say(text: str) -> None:
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv))
