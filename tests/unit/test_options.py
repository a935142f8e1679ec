"""options.parse: the users' command lines, every option's value, every error."""

import pytest

from stunnel3.options import (
    Address,
    OptionError,
    Options,
    SocketOption,
    atoi,
    getopt,
    parse,
    parse_debug,
    program_argv,
    resolve_host,
    safename,
    service_name,
)

USERS_CHAIN = "-D 7 -/ ssl -s 451 -g 451 -i -R seed -p stunnel.pem -n smtp- -f -F 3"


def test_the_readme_chain_parses_into_the_expected_options():
    assert parse(USERS_CHAIN.split()) == Options(
        debug_level=7,
        chroot_dir="ssl",
        setuid_user="451",
        setgid_group="451",
        switch_ids_now=True,
        rand_file="seed",
        pem="stunnel.pem",
        protocol="smtp-",
        foreground=True,
        plaintext_fd=3,
        service_name="stunnel",
    )


def test_sme_servers_imap_line_names_the_service():
    argv = "-/ ssl -s 451 -g 451 -N imap -i -R seed -p imapd.pem -n imap- -f -F 3".split()
    options = parse(argv)
    assert (options.service_name, options.protocol, options.pem) == ("imap", "imap-", "imapd.pem")


def test_names_stay_strings_for_the_jail_engineer_to_resolve():
    options = parse(["-s", "stunnel", "-g", "stunnel", "-F3"])
    assert (options.setuid_user, options.setgid_group) == ("stunnel", "stunnel")


BASE = ["-F", "3"]  # satisfies the plaintext-end rule so one option can be looked at

VALUES = [
    (["-A", "ca.pem"], "ca_file", "ca.pem"),
    (["-a", "certs"], "ca_dir", "certs"),
    (["-c"], "client", True),
    (["-p", "k.pem"], "pem", "k.pem"),
    (["-v", "0"], "verify_level", 0),
    (["-v", "3"], "verify_level", 3),
    (["-v", "x"], "verify_level", 0),  # atoi("x") == 0, as 3.22
    (["-v", "2abc"], "verify_level", 2),
    (["-f"], "foreground", True),
    (["-T"], "transparent", True),
    (["-s", "nobody"], "setuid_user", "nobody"),
    (["-g", "65534"], "setgid_group", "65534"),
    (["-t", "1"], "session_timeout", 1),
    (["-t", " 600s"], "session_timeout", 600),
    (["-t", "-5"], "session_timeout", -5),  # 3.22 refused only 0
    (["-B", "-1"], "rand_bytes", -1),  # RAND_load_file: the whole file
    (["-n", "http"], "protocol", "http"),  # 3.22 failed each connection, not the line
    (["-P", "relative"], "pid_file", "relative"),  # judged by the daemon, as 3.22
    (["-u", "root"], "ident_user", "root"),
    (["-n", "smtp"], "protocol", "smtp"),
    (["-n", "pop3-"], "protocol", "pop3-"),
    (["-n", "nntp"], "protocol", "nntp"),
    (["-N", "smtps"], "service_name", "smtps"),
    (["-N", "smtp-tls"], "service_name", "smtp.tls"),  # 3.22's safename
    (["-C", "HIGH:!aNULL"], "cipher_list", "HIGH:!aNULL"),
    (["-D", "0"], "debug_level", 0),
    (["-D", "mail.info"], "debug_facility", "mail"),
    (["-D", "LOCAL3.Debug"], "debug_level", 7),
    (["-E", "/var/run/egd"], "egd_socket", "/var/run/egd"),
    (["-R", "seed"], "rand_file", "seed"),
    (["-W"], "rand_no_write", True),
    (["-B", "0"], "rand_bytes", 0),
    (["-B", "1024"], "rand_bytes", 1024),
    (["-P", "none"], "pid_file", "none"),
    (["-P", "/run/"], "pid_file", "/run/"),
    (["-S", "0"], "cert_defaults", 0),
    (["-S", "3"], "cert_defaults", 3),
    (["-o", "log"], "output_file", "log"),
    (["-I", "192.0.2.1"], "local_ip", "192.0.2.1"),
    (["-I", "[::1]"], "local_ip", "::1"),
    (["-/", "jail"], "chroot_dir", "jail"),
    (["-i"], "switch_ids_now", True),
    (["-d", "465"], "daemon", Address(None, 465)),
    (["-d", "127.0.0.1:465"], "daemon", Address("127.0.0.1", 465)),
    (["-d", "[::1]:465"], "daemon", Address("::1", 465)),
    (["-d", "::1:465"], "daemon", Address("::1", 465)),  # the last ':' splits, as 3.22
    (["-d", "smtp"], "daemon", Address(None, 25)),  # /etc/services, as getservbyname
    (["-d", "65535"], "daemon", Address(None, 65535)),
    (["-O", "a:SO_KEEPALIVE=1"], "socket_options", (SocketOption("a", "SO_KEEPALIVE", (1,)),)),
    (["-O", "l:SO_LINGER=1:60"], "socket_options", (SocketOption("l", "SO_LINGER", (1, 60)),)),
    (["-O", "r:SO_RCVTIMEO=5"], "socket_options", (SocketOption("r", "SO_RCVTIMEO", (5, 0)),)),
    (["-O", "r:TCP_NODELAY=x"], "socket_options", (SocketOption("r", "TCP_NODELAY", (0,)),)),
    (
        ["-O", "l:SO_BINDTODEVICE=lo"],
        "socket_options",
        (SocketOption("l", "SO_BINDTODEVICE", (), "lo"),),
    ),
]


@pytest.mark.parametrize(("argv", "field", "value"), VALUES, ids=lambda v: str(v))
def test_each_option_sets_its_field(argv, field, value):
    assert getattr(parse(argv + BASE), field) == value


def test_mode_options():
    assert parse(["-r", "25"]).remote == Address(None, 25)
    assert parse(["-r", "mail.example:smtp"]).remote == Address("mail.example", 25)
    options = parse(["-L", "/bin/sh"])
    assert (options.local_program, options.local_pty) == ("/bin/sh", True)
    options = parse(["-l", "/bin/cat"])
    assert (options.local_program, options.local_pty) == ("/bin/cat", False)
    assert parse(["-d", "443", "-r", "80"]).daemon == Address(None, 443)
    assert parse(["-d", "443", "-l", "/bin/cat"]).local_program == "/bin/cat"


def test_socket_options_accumulate_in_order():
    options = parse(["-O", "a:SO_REUSEADDR=0", "-O", "r:IP_TTL=9", "-F3"])
    assert [o.name for o in options.socket_options] == ["SO_REUSEADDR", "IP_TTL"]


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["-fiF3"], dict(foreground=True, switch_ids_now=True, plaintext_fd=3)),
        (["-fiF", "3"], dict(foreground=True, switch_ids_now=True, plaintext_fd=3)),
        (["-/ssl", "-F3"], dict(chroot_dir="ssl")),
        (["-n", "smtp-", "-N", "-", "-F3"], dict(service_name=".")),
        (["-N", "--", "-F3"], dict(service_name="..")),
        (["-N-f", "-F3"], dict(service_name=".f", foreground=False)),
        # glibc permutes: options after an operand count, `--` ends them
        (["-F3", "-", "-f"], dict(foreground=True, program_args=("-",))),
        (["-F3", "x", "-f"], dict(foreground=True, program_args=("x",))),
        (["-F3", "--", "-f"], dict(foreground=False, program_args=("-f",))),
        (["-F3", "--"], dict(program_args=())),
    ],
)
def test_getopt_rules(argv, expected):
    options = parse(argv)
    for field, value in expected.items():
        assert getattr(options, field) == value, field


def test_posixly_correct_stops_at_the_first_operand(monkeypatch):
    monkeypatch.setenv("POSIXLY_CORRECT", "1")
    options = parse(["-F3", "x", "-f"])
    assert (options.foreground, options.program_args) == (False, ("x", "-f"))


def test_operands_are_the_program_argv_and_name_the_service():
    # 3.22: `-l prog -- argv0 args...`: execargs = argv+optind, servname = execargs[0]
    options = parse(["-l", "/usr/sbin/in.pop3d", "--", "pop3d", "-x"])
    assert options.program_args == ("pop3d", "-x")
    assert program_argv(options) == ["pop3d", "-x"]
    assert service_name(options) == "pop3d"


@pytest.mark.parametrize(
    ("argv", "name"),
    [
        (["-l", "/usr/sbin/in.pop3d"], "in.pop3d"),  # -l's base name is not made safe
        (["-l", "imapd"], "imapd"),
        (["-r", "110"], "110"),
        (["-r", "mail:110"], "mail.110"),  # 3.22's safename: ':' -> '.'
        (["-r", "mail-1.example:pop3"], "mail.1.example.pop3"),
        (["-l", "/bin/x", "-r", "25"], "x"),  # -r after -l leaves -l's name
        (["-r", "25", "-l", "/bin/x"], "x"),
        (["-N", "pop", "-l", "/bin/x"], "pop"),  # -N wins over everything
        (["-l", "/bin/x", "-N", "pop", "--", "argv0"], "pop"),
        (["-l", "/bin/x", "--", "argv-0"], "argv-0"),  # operands are not made safe
        (["-N", "caf\u00e9", "-F3"], "caf.."),  # each byte of UTF-8
        (["-F", "3"], "stunnel"),
    ],
)
def test_service_name_defaults(argv, name):
    assert parse(argv).service_name == name


def test_safename():
    assert safename("smtp-tls") == "smtp.tls"
    assert safename("a b/c:d_e") == "a.b.c.d.e"
    assert safename("Imap4") == "Imap4"


def test_program_argv_defaults_to_the_service_name():
    assert program_argv(parse(["-l", "/usr/bin/cat"])) == ["cat"]
    assert program_argv(parse(["-l", "/usr/bin/cat", "-N", "kitty"])) == ["kitty"]


def test_help_and_version_win_only_where_getopt_meets_them():
    assert parse(["-h"]).show == "help"
    assert parse(["-V"]).show == "version"
    assert parse(["-t", "5", "-V", "-Q"]).show == "version"  # stops at -V
    assert parse(["-fh"]).show == "help"  # no mode check: 3.22 exited in the loop
    with pytest.raises(OptionError, match="Illegal option: 'Q'"):
        parse(["-Q", "-h"])
    with pytest.raises(OptionError, match="Illegal session timeout: 0"):
        parse(["-t", "0", "-h"])


ERRORS = [
    (["-Q"], "Illegal option: 'Q'", 1),
    (["-fQ"], "Illegal option: 'Q'", 1),
    (["-:"], "Illegal option: ':'", 1),
    (["--help"], "Illegal option: '-'", 1),
    (["-p"], "Illegal option: 'p'", 1),  # missing argument: getopt's '?' too
    (["-fiF"], "Illegal option: 'F'", 1),
    ([], "Either -r, -l (or -L) option must be used", 1),
    (["-f", "-d", "443"], "Either -r, -l (or -L) option must be used", 1),
    (["-v", "4", "-F3"], "Bad verify level", 1),
    (["-v", "-1", "-F3"], "Bad verify level", 1),
    (["-S", "4", "-F3"], "Bad -S value '4'", 1),
    (["-S", "-2", "-F3"], "Bad -S value '-2'", 1),
    (["-t", "0", "-F3"], "Illegal session timeout: 0", 1),
    (["-t", "x", "-F3"], "Illegal session timeout: x", 1),
    (["-D", "8", "-F3"], "Illegal debug argument: 8", 1),
    (["-D", "77", "-F3"], "Illegal debug argument: 77", 1),
    (["-D", "", "-F3"], "Illegal debug argument: ", 1),
    (["-D", "loud", "-F3"], "Illegal debug argument: loud", 1),
    (["-D", "bogus.info", "-F3"], "Illegal debug argument: bogus.info", 1),
    (["-D", "mail.", "-F3"], "Illegal debug argument: mail.", 1),
    (["-D", ".7", "-F3"], "Illegal debug argument: .7", 1),
    (["-O", "x:SO_DEBUG=1", "-F3"], "Illegal socket option: x:SO_DEBUG=1", 1),
    (["-O", "aSO_DEBUG=1", "-F3"], "Illegal socket option: aSO_DEBUG=1", 1),
    (["-O", "a:SO_DEBUG", "-F3"], "Illegal socket option: a:SO_DEBUG", 1),
    (["-O", "a:SO_NOPE=1", "-F3"], "Illegal socket option: a:SO_NOPE", 1),  # cut at '='
    (["-O", "a:so_debug=1", "-F3"], "Illegal socket option: a:so_debug", 1),
    (["-O", "a:TCP_MAXSEG=536", "-F3"], "Illegal socket option: a:TCP_MAXSEG", 1),
    (["-O", "l:SO_BINDTODEVICE=" + "e" * 16, "-F3"], None, 1),
    (["-d", "0", "-F3"], "Invalid port: 0", 2),
    (["-d", "65536", "-F3"], "Invalid port: 65536", 2),
    (["-d", "25x", "-F3"], "Invalid port: 25x", 2),
    (["-d", "host:", "-F3"], "Invalid port: ", 2),
    (["-d", "no-such-service", "-F3"], "Invalid port: no-such-service", 2),
    (["-r", "[::1]:x"], "Invalid port: x", 2),
    (["-d", "1", "-d", "2", "-F3"], "Multiple -d not allowed", 1),
    (["-r", "1", "-r", "2"], "Multiple -r not allowed", 1),
    (["-l", "a", "-L", "b"], "Multiple -l or -L not allowed", 1),
    (["-l", "a", "-l", "b"], "Multiple -l or -L not allowed", 1),
    (
        ["-d", "1", "-r", "2", "-l", "x"],
        "-d, -r and -l (or -L) options are not allowed together",
        1,
    ),
    (["-r", "2", "-F", "3"], "-F, -r and -l (or -L) options are not allowed together", 1),
    (["-l", "x", "-F", "3"], "-F, -r and -l (or -L) options are not allowed together", 1),
    (["-F", "x"], "Illegal file descriptor: x", 1),
    (["-F", "-1"], "Illegal file descriptor: -1", 1),
]


@pytest.mark.parametrize(("argv", "text", "status"), ERRORS, ids=lambda v: str(v))
def test_errors_carry_322s_text_and_status(argv, text, status):
    with pytest.raises(OptionError) as caught:
        parse(argv)
    if text is not None:
        assert caught.value.text == text
    assert caught.value.status == status
    assert caught.value.usage_hint == (status == 1)  # 3.22: print_info() after 1, exit(2) bare


def test_first_error_in_argv_order_wins():
    with pytest.raises(OptionError, match="Bad verify level"):
        parse(["-v", "9", "-Q"])
    with pytest.raises(OptionError, match="Illegal option: 'Q'"):
        parse(["-Q", "-v", "9"])


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("", 0),
        ("x", 0),
        ("7", 7),
        ("  -3", -3),
        ("+4x", 4),
        ("12abc", 12),
        ("- 1", 0),
        ("4294967297", 1),  # strtol's long, kept in an int
        ("2147483648", -(2**31)),
        ("99999999999999999999", -1),  # clamped to LONG_MAX first
    ],
)
def test_atoi_is_cs(text, value):
    assert atoi(text) == value


@pytest.mark.parametrize(
    ("text", "result"),
    [
        ("7", (None, 7)),
        ("debug", (None, 7)),
        ("ERR", (None, 3)),
        ("mail.5", ("mail", 5)),
        ("authpriv.warning", ("authpriv", 4)),
        ("mail..info.junk", ("mail", 6)),  # strtok skips empty pieces, ignores the rest
    ],
)
def test_parse_debug(text, result):
    assert parse_debug(text) == result


def test_getopt_returns_letters_and_operands():
    assert getopt(["-fiF3", "-n", "-", "x", "-f"]) == (
        [("f", ""), ("i", ""), ("F", "3"), ("n", "-"), ("f", "")],
        ["x"],
    )


def test_errors_are_shown_only_through_the_debug_level_met_so_far():
    """3.22 logged them with log(): `-D 2 -Q` says only print_info's hint."""
    for argv, shown in [
        (["-Q"], True),
        (["-D", "2", "-Q"], False),
        (["-D", "2", "-D", "9"], True),  # a bad level set 3.22's to 8 first
        (["-D", "2", "-D", "nosuch.5"], False),  # a bad facility did not
        (["-D", "3", "-t", "0"], True),
    ]:
        with pytest.raises(OptionError) as caught:
            parse(argv)
        assert caught.value.shown is shown, argv


def test_hosts_resolve_while_parsing_with_a_resolver():
    options = parse(["-r", "localhost:25", "-I", "127.0.0.1", "-d", "127.0.0.1:9"], resolve_host)
    assert "127.0.0.1" in options.remote.resolved
    assert options.local_ip == "127.0.0.1"
    assert options.daemon == Address("127.0.0.1", 9, ("127.0.0.1",))
    assert parse(["-r", "localhost:25"]).remote == Address("localhost", 25)  # no resolver
    for argv in (["-r", ":25"], ["-I", "", "-r", "1"], ["-r", "nosuch.invalid:25"]):
        with pytest.raises(OptionError) as caught:
            parse(argv, resolve_host)
        assert caught.value.text.startswith("Error resolving '")
        assert (caught.value.status, caught.value.usage_hint) == (1, False)
    with pytest.raises(OptionError, match="Error resolving"):  # the host before the port
        parse(["-r", ":0"], resolve_host)


def test_version_shows_what_came_before_it():
    """3.22's -V printed its variables: -t, -D, -P, -p and -O met before -V."""
    options = parse(["-t", "5", "-D", "3", "-P", "/x/", "-p", "k.pem", "-O", "a:IP_TTL=9", "-V"])
    assert options.show == "version"
    assert (options.session_timeout, options.debug_level, options.pid_file) == (5, 3, "/x/")
    assert options.pem == "k.pem" and options.socket_options[0].name == "IP_TTL"


def test_help_documents_every_option_as_getopt_reads_it():
    """docopt-ng reads -h's option lines; they must match OPTSTRING letter for letter."""
    from stunnel3.engine.usage import documented_options
    from stunnel3.options import OPTSTRING

    letters = [c for c in OPTSTRING if c != ":"]
    expected = {c: int(f"{c}:" in OPTSTRING) for c in letters}
    assert documented_options() == expected
