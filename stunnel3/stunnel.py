"""stunnel's main: argv -> Options -> Log -> the service; exceptions become log lines.

The order is 3.22's: options are parsed first, with errors on stderr (there is
no log yet); -h and -V print and exit 0; then the log opens as the options say,
and only then is the engine imported, so that a usage error or -h never pays
for loading OpenSSL.
"""

import sys

from stunnel3 import log as logging
from stunnel3.options import USAGE_HINT, OptionError, parse


def main(argv: list[str]) -> int:
    """argv[0] is the program name (as in sys.argv); the exit status is returned."""
    try:
        return _run(argv[1:])
    except KeyboardInterrupt:
        return 3
    except BaseException as error:  # noqa: BLE001 - no traceback ever reaches a user
        if isinstance(error, SystemExit):
            return error.code if isinstance(error.code, int) else 1
        logging.stderr_line(logging.LOG_ERR, f"{type(error).__name__}: {error}")
        return 1


def _run(args: list[str]) -> int:
    try:
        options = parse(args)
    except OptionError as error:
        logging.stderr_line(logging.LOG_ERR, error.text)
        if error.usage_hint:
            _say(f"\n{USAGE_HINT}\n\n")
        return error.status
    if options.show is not None:
        from stunnel3 import usage

        _say(usage.help_text() if options.show == "help" else usage.version_text())
        return 0
    try:
        log = logging.Log.from_options(options)
    except logging.LogOpenError as error:
        logging.stderr_line(logging.LOG_ERR, error.text)
        return error.status
    try:
        from stunnel3 import service  # type: ignore[attr-defined]  # the engine, being written

        return service.run(options, log)
    except BaseException as error:
        if isinstance(error, SystemExit | KeyboardInterrupt):
            raise
        log.err(f"{type(error).__name__}: {error}")
        return 1
    finally:
        log.close()


def _say(text: str) -> None:
    try:
        sys.stderr.write(text)
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main(sys.argv))
