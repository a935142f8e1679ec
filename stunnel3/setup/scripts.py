"""The files stunnel3-setup writes: compat/'s run scripts, byte for byte, and reading back
what a run wrote.

The package carries its own copies because `pip install .` installs no compat/
directory; tests hold each equal to its file in compat/. A run file is a
template with only its variables set (`NAME=value` lines at the top, values
quoted for sh); `read_run` gives them back, so that a second run keeps what
the first chose, and `is_ours` says whether a file is still exactly what we
wrote (then it may be rewritten with new values; an edited one needs --force).
"""

import re
import shlex

from stunnel3.support.cgetopt import OptionError, getopt

SEPARATOR = "-makesock_connect_to"  # makesock's: what follows is not stunnel's

# compat/smtp-tls-run.
RUN_SCRIPT = r"""#!/bin/sh
# smtp-tls-run: SMTP with STARTTLS for qmail, after Scott Gifford's smtp-tls.README
# (stunnel 3.22 + sg2 patch, makesock, fixcrio), run by stunnel3's programs.
# Install it as `run` in the service directory (stunnel3-setup does) and let
# supervise start it there: `-/ ssl` below is relative to that directory.

# What an administrator sets anyway. PATH: where stunnel3's stunnel and makesock
# are; it must come before /usr/bin, where Debian's stunnel4 puts its own stunnel.
PATH=/usr/local/bin:/var/qmail/bin:/usr/bin:/bin
IP=0
PORT=smtp
RULES=/etc/tcp.smtp.cdb
SMTPD=/var/qmail/bin/qmail-smtpd
export PATH

# "First, it gathers up some information from control files and from the system
# user and group database." Numbers, not names: stunnel switches to them inside
# the jail, where there is no /etc/passwd (names would work too, looked up first).
SSLUID=`id -u stunnel` || exit 111
SSLGID=`id -g stunnel` || exit 111
MAXSMTPD=`head -n 1 /var/qmail/control/concurrencyincoming 2>/dev/null`
LOCAL=`head -n 1 /var/qmail/control/me 2>/dev/null`

# tcpserver's options that depend on what exists: the rules file (RELAYCLIENT
# and the like) when there is one, the local name when qmail has one.
set -- -c "${MAXSMTPD:-40}"
if [ -f "$RULES" ]; then set -- "$@" -x "$RULES"; fi
if [ -n "$LOCAL" ]; then set -- "$@" -l "$LOCAL"; fi

# softlimit: 5 MB per process, as ever (stunnel3's programs raise their own
# soft limit to what Python needs; qmail-smtpd runs under these 5 MB).
# tcpserver stays root so that stunnel can chroot and switch ids itself.
# makesock: stunnel gets the plaintext end on fd 3, setuidgid the other end.
exec softlimit -m 5000000 \
  tcpserver -v -R "$@" "$IP" "$PORT" \
    makesock \
      stunnel -D 7 -/ ssl -s "$SSLUID" -g "$SSLGID" -i -R seed -p stunnel.pem -n smtp- -f -F 3 \
    -makesock_connect_to \
      setuidgid qmaild fixcrio "$SMTPD" 2>&1
"""
RUN_VARIABLES = ("PATH", "IP", "PORT", "RULES", "SMTPD")

# compat/stunnel3-warm-run: the warm helper's service, SERVICE_DIR/warm.
WARM_RUN_SCRIPT = r"""#!/bin/sh
# stunnel3-warm-run: the warm helper as a daemontools service (docs/warm.md).
# stunnel3-setup installs it as `run` in the `warm` directory inside the SMTP
# service directory; link that into /service as well. This directory is the
# rendezvous: the SMTP service's makesock and stunnel look for the helper in
# `warm` under their own working directory, the service directory. While it
# is down, every connection is served directly, exactly as before.
#
# It runs as root: its workers become the root processes that tcpserver starts,
# and chroot and switch ids exactly as those would. Only root can ask it for
# anything (its FIFOs are 0600). After upgrading stunnel3, restart it
# (`svc -t`): the helper runs the code it loaded when it started.
PATH=/usr/local/bin:/usr/bin:/bin
export PATH

exec stunnel3-warm -d . 2>&1
"""
WARM_RUN_VARIABLES = ("PATH",)

LOG_RUN = "#!/bin/sh\nexec setuidgid {user} multilog t ./main\n"
LOG_USER = re.compile(r"\Aexec setuidgid (\S+) multilog t ./main\n\Z", re.MULTILINE)


def _literal(text: str):
    return lambda _match: text  # re.sub takes a function's result as it is, no escapes


class Unsettable(Exception):
    """A value that cannot go into a run file (a newline, a variable it does not have)."""


def render_run(
    variables: dict[str, str], template: str = RUN_SCRIPT, allowed: tuple = RUN_VARIABLES
) -> str:
    """The run script with the administrator's variables set, the rest untouched."""
    for name, value in variables.items():
        if name not in allowed or "\n" in value:
            raise Unsettable(name)
        line = re.compile(rf"^{name}=.*$", re.MULTILINE)
        assignment = f"{name}={shlex.quote(value)}"
        template = line.sub(_literal(assignment), template, count=1)
    return template


def read_run(text: str, allowed: tuple = RUN_VARIABLES) -> dict[str, str]:
    """The variables of a run file, as sh would set them (those it sets plainly)."""
    found = {}
    for name in allowed:
        match = re.search(rf"^{name}=(.*)$", text, re.MULTILINE)
        try:
            words = shlex.split(match.group(1)) if match else []
        except ValueError:
            continue
        if len(words) == 1 or (match and not words):
            found[name] = words[0] if words else ""
    return found


def is_ours(text: str, template: str = RUN_SCRIPT, allowed: tuple = RUN_VARIABLES) -> bool:
    """Whether a run file is the template with its variables set, and nothing else changed."""
    try:
        return render_run(read_run(text, allowed), template, allowed) == text
    except Unsettable:
        return False


def log_user(text: str) -> str | None:
    """The account of a log/run we wrote, or None if it is not one of ours."""
    match = LOG_USER.match(text.removeprefix("#!/bin/sh\n"))
    return match.group(1) if match and LOG_RUN.format(user=match.group(1)) == text else None


def stunnel_words(run: str) -> list[list[str]]:
    """The command lines of stunnel in a run file, as sh reads them (quotes removed; a
    variable stays one word, as `"$SSLUID"` is), each up to makesock's separator."""
    lines = []
    for line in run.replace("\\\n", " ").splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        for at, word in enumerate(words):
            if word == "stunnel":
                argv = words[at + 1 :]
                lines.append(argv[: argv.index(SEPARATOR)] if SEPARATOR in argv else argv)
    return lines


def late_id_switches(run: str) -> list[list[str]]:
    """Every stunnel line that would keep the TLS code root: -s or -g in inetd mode (no -d)
    without -i, which 3.22 ignores there (issue #18). stunnel3-setup writes none."""
    late = []
    for argv in stunnel_words(run):
        try:
            letters = {letter for letter, _ in getopt(argv)[0]}
        except OptionError:
            late.append(argv)  # not a line stunnel would even start with
            continue
        if letters & {"s", "g"} and not letters & {"i", "d"}:
            late.append(argv)
    return late
