"""The files stunnel3-setup writes: compat/'s run scripts, byte for byte.

The package carries its own copies because `pip install .` installs no compat/
directory; tests hold each equal to its file in compat/.
"""

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
