"""makesock.without_fixcrio: when PROG2 may run without its fixcrio (the relay adds the CRs).

A directory on PATH holds a copy of our fixcrio front, a program and, where a case
needs it, an impostor; makesock's decision is read for each shape of the command line.
"""

import os
import shutil
import socket
import tempfile
from pathlib import Path

import pytest

from stunnel3 import makesock
from stunnel3.engine.line_ends import CrAdder, add_cr


@pytest.fixture
def bindir(fixcrio_bin, monkeypatch):
    # Under /tmp itself: pytest's own directories are closed to others (0700).
    tmp_path = Path(tempfile.mkdtemp(prefix="stunnel3-elision-", dir="/tmp"))
    tmp_path.chmod(0o755)
    shutil.copy(fixcrio_bin, tmp_path / "fixcrio")
    (tmp_path / "prog").write_text("#!/bin/sh\nexit 0\n")
    for name in ("fixcrio", "prog"):
        (tmp_path / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    # An interpreter every account may run, whatever this machine's install is under.
    monkeypatch.setenv("STUNNEL3_PYTHON", "/usr/bin/python3")
    monkeypatch.delenv("STUNNEL3_MAKESOCK_EXEC", raising=False)
    yield tmp_path
    shutil.rmtree(tmp_path)


def decide(first: list[str], second: list[str], fd: int = 3, kind=socket.SOCK_STREAM):
    return makesock.without_fixcrio(makesock.Invocation(["stunnel", *first], second, fd, kind))


STUNNEL = ["-p", "stunnel.pem", "-n", "smtp-", "-f", "-F", "3"]


def test_the_users_chain_loses_its_fixcrio(bindir):
    chain = ["-D", "7", "-/", "ssl", "-s", "451", "-g", "451", "-i", "-R", "seed", *STUNNEL]
    second = ["setuidgid", "qmaild", "fixcrio", "prog", "arg"]
    assert decide(chain, second) == (["setuidgid", "qmaild", "prog", "arg"], "setuidgid")


def test_fixcrio_alone_loses_itself_and_keeps_its_name_for_errors(bindir):
    assert decide(STUNNEL, ["fixcrio", "prog"]) == (["prog"], "fixcrio")
    assert decide(STUNNEL, [str(bindir / "fixcrio"), "prog"]) == (["prog"], "fixcrio")


@pytest.mark.parametrize(
    "first",
    [
        ["-fF3", "-p", "x"],  # a cluster: getopt's reading, not a word match
        ["-F", "4", "-F", "3"],  # the last -F is the one 3.22 kept
    ],
)
def test_stunnel_serving_the_pair_by_any_spelling(bindir, first):
    assert decide(first, ["fixcrio", "prog"]) == (["prog"], "fixcrio")


@pytest.mark.parametrize(
    "first",
    [
        ["-p", "x", "-r", "25"],  # no -F: stunnel does not serve the pair
        ["-F", "4"],  # serves another descriptor
        ["-F", "03"],  # 3.22 would read 3, but the word is not ours to guess
        ["-F", "3", "-d", "465"],  # daemon mode
        ["-F", "3", "-V"],
        ["-h", "-F", "3"],
        ["-F", "3", "-x"],  # a usage error: stunnel serves nothing
        ["-F"],
    ],
)
def test_stunnel_not_serving_the_pair_keeps_fixcrio(bindir, first):
    assert decide(first, ["fixcrio", "prog"]) is None


@pytest.mark.parametrize(
    "second",
    [
        ["fixcrio"],  # fixcrio's usage error is kept
        ["fixcrio", "missing-program"],  # its `unable to run` line is kept
        ["setuidgid", "qmaild", "prog"],  # no fixcrio at all
        ["setuidgid", "qmaild"],
        ["envdir", "env", "fixcrio", "prog"],  # only setuidgid is looked through
        ["prog", "fixcrio"],
    ],
)
def test_other_shapes_run_as_written(bindir, second):
    assert decide(STUNNEL, second) is None


def test_only_a_stream_pair(bindir):
    for kind in (socket.SOCK_SEQPACKET, socket.SOCK_DGRAM):
        assert decide(STUNNEL, ["fixcrio", "prog"], kind=kind) is None


def test_another_fixcrio_first_on_path_runs(bindir, monkeypatch):
    monkeypatch.setenv("PATH", f"/usr/bin:{bindir}:/bin")  # Debian's ucspi-tcp fixcrio
    assert decide(STUNNEL, ["fixcrio", "prog"]) is None
    (bindir / "fixcrio").write_text('#!/bin/sh\nlogger hi; exec /usr/bin/fixcrio "$@"\n')
    monkeypatch.setenv("PATH", f"{bindir}:/usr/bin:/bin")  # someone's wrapper
    assert decide(STUNNEL, ["fixcrio", "prog"]) is None


def test_after_setuidgid_others_must_be_able_to_run_fixcrio(bindir, monkeypatch):
    second = ["setuidgid", "qmaild", "fixcrio", "prog"]
    (bindir / "fixcrio").chmod(0o750)
    assert decide(STUNNEL, second) is None
    assert decide(STUNNEL, second[2:]) == (["prog"], "fixcrio")  # root runs it itself
    (bindir / "fixcrio").chmod(0o755)
    bindir.chmod(0o750)
    assert decide(STUNNEL, second) is None
    bindir.chmod(0o755)
    monkeypatch.setenv("STUNNEL3_PYTHON", str(bindir / "prog"))  # our Python, were it here
    bindir.chmod(0o754)  # others may read the directory, not pass through it
    assert decide(STUNNEL, second) is None
    bindir.chmod(0o755)
    assert decide(STUNNEL, second) == (["setuidgid", "qmaild", "prog"], "setuidgid")


def test_the_relay_rule_is_fixcrios_under_every_split():
    data = b"a\nb\r\nc\r\r\n\n\r\rd\n\r"
    whole = add_cr(data, False)[0]
    for cut in range(len(data) + 1):
        for cut2 in range(cut, len(data) + 1):
            adder = CrAdder()
            got = adder(data[:cut]) + adder(data[cut:cut2]) + adder(data[cut2:])
            assert got == whole, (cut, cut2)
    assert whole == b"a\r\nb\r\nc\r\r\n\r\n\r\rd\r\n\r"


def test_exec_always_keeps_everything(bindir, stunnel_bin, monkeypatch):
    monkeypatch.setenv("PATH", f"{os.path.dirname(stunnel_bin)}:{bindir}:/usr/bin:/bin")
    monkeypatch.delenv("STUNNEL3_PYTHON")
    assert makesock.runs_our_stunnel("stunnel")
    monkeypatch.setenv("STUNNEL3_MAKESOCK_EXEC", "1")
    assert not makesock.runs_our_stunnel("stunnel")  # and without_fixcrio is never asked


def test_stunnel_takes_fixcrios_rule_only_for_its_plaintext_descriptor():
    """The hand-over (stunnel.main's fixcrio_fd) gives the relay fixcrio's rule for -F's
    descriptor in inetd mode, and for nothing else."""
    from stunnel3 import stunnel
    from stunnel3.engine.line_ends import FixcrioRule
    from stunnel3.options import parse

    assert isinstance(stunnel._line_ends(parse(STUNNEL), 3), FixcrioRule)
    assert stunnel._line_ends(parse(STUNNEL), None) is None
    assert stunnel._line_ends(parse(STUNNEL), 4) is None
    assert stunnel._line_ends(parse([*STUNNEL, "-d", "465"]), 3) is None
