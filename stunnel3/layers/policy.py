"""TLS policy per client, from the environment tcpserver passes on (tcprules).

tcpserver exports the variables of the rule that matched the client
(`127.0.0.1:allow,STUNNEL3_AUTH="plaintext"` in /etc/tcp.smtp, compiled by
tcprules) to the whole chain, so the policy is set per address where qmail's
RELAYCLIENT already is; envdir or the run script can set it for every client.
It is read once, as the session starts (session.make_layer), and applies to the
server side of -n smtp-, smtp, pop3-, pop3 and imap-:

  STUNNEL3_AUTH      tls (the default): no credential crosses before TLS; plaintext:
                     they may (3.22's behaviour, e.g. for a webmail on loopback)
  STUNNEL3_STARTTLS  optional: STARTTLS offered, the client may do without it (what
                     -n smtp-, pop3- and imap- say); required: TLS first (what -n
                     smtp and pop3 say); off: STARTTLS not offered (a peer known to
                     break TLS). Unset: as -n says.

A value not in the list is one log line and the safe choice: STUNNEL3_AUTH=tls,
and for STUNNEL3_STARTTLS what -n says (mail keeps flowing, and STUNNEL3_AUTH
protects the passwords either way). Values are read as they are, case aside.
Sans-I/O: the caller passes the environment.
"""

import enum
from collections.abc import Mapping

from stunnel3.support.record import record

AUTH = "STUNNEL3_AUTH"
STARTTLS = "STUNNEL3_STARTTLS"
# 3.22's -n smtp and -n pop3 required TLS first; sg2's smtp-, pop3-, imap- did not.
REQUIRED_BY_PROTOCOL = frozenset({"smtp", "pop3"})


class Starttls(enum.Enum):
    OPTIONAL = "optional"
    REQUIRED = "required"
    OFF = "off"


AUTH_VALUES = {"tls": False, "plaintext": True}  # value -> credentials before TLS


@record(frozen=True)
class Policy:
    """What one client gets: STARTTLS, and whether it may log in before TLS."""

    starttls: Starttls
    plaintext_auth: bool
    starttls_source: str  # for the log: `-n smtp-`, or `STUNNEL3_STARTTLS=off`
    auth_source: str

    def layer_options(self, tls_available: bool = True) -> dict[str, bool]:
        """The layer's keyword arguments (line_proxy.LineProxy). tls_available: False when
        the certificate cannot be used, which offers no STARTTLS, as `off` does."""
        return {
            "require_tls": self.starttls is Starttls.REQUIRED,
            "offer_tls": self.starttls is not Starttls.OFF and tls_available,
            "plaintext_auth": self.plaintext_auth,
        }

    def describe(self, tls_available: bool = True) -> str:
        """The policy in force, in one log line."""
        if self.starttls is not Starttls.OFF and not tls_available:
            starttls = f"STARTTLS {self.starttls.value} but not available (no usable certificate)"
        else:
            starttls = f"STARTTLS {self.starttls.value} ({self.starttls_source})"
        logins = "also in plaintext" if self.plaintext_auth else "only over TLS"
        return f"Client policy: {starttls}, logins {logins} ({self.auth_source})"


def read(environ: Mapping[str, str], protocol: str) -> tuple[Policy, list[str]]:
    """The policy for this client under -n protocol, and one line per value refused."""
    problems = []
    default = Starttls.REQUIRED if protocol in REQUIRED_BY_PROTOCOL else Starttls.OPTIONAL
    starttls, starttls_source = default, f"-n {protocol}"
    value = environ.get(STARTTLS, "")
    if value:
        try:
            starttls, starttls_source = Starttls(value.lower()), f"{STARTTLS}={value}"
        except ValueError:
            problems.append(
                f"{STARTTLS}={value!r} is not optional, required or off: "
                f"{default.value}, as -n {protocol} says"
            )
    plaintext_auth, auth_source = False, "the default"
    value = environ.get(AUTH, "")
    if value:
        if value.lower() in AUTH_VALUES:
            plaintext_auth, auth_source = AUTH_VALUES[value.lower()], f"{AUTH}={value}"
        else:
            problems.append(f"{AUTH}={value!r} is not tls or plaintext: tls, logins only over TLS")
    return Policy(starttls, plaintext_auth, starttls_source, auth_source), problems
