"""bin/'s four fronts are one file, and what they share with the Python is one value.

bin/stunnel, bin/makesock, bin/fixcrio and bin/stunnel3-warm differ only in the
line that names the program (`prog=`); the warm worker does what the front would
have done, with the front's floor, stack size and list of programs that may hand
over, so each is held to the front's text here.
"""

import re
from pathlib import Path

import pytest

from stunnel3.support import fronts
from stunnel3.warm import worker as warm_worker

BIN = Path(__file__).resolve().parents[2] / "bin"
FRONTS = ("stunnel", "makesock", "fixcrio", "stunnel3-warm")
TEXT = (BIN / "stunnel").read_bytes()


@pytest.mark.parametrize("prog", FRONTS)
def test_each_front_is_bin_stunnel_but_for_its_prog_line(prog):
    text = (BIN / prog).read_bytes()
    assert fronts.program(str(BIN / prog).encode()) == prog.encode()
    assert text.replace(b"\nprog=" + prog.encode() + b"\n", b"\nprog=stunnel\n", 1) == TEXT
    assert (BIN / prog).stat().st_mode & 0o111 == 0o111


def test_the_front_names_each_program_once_and_only_in_its_prog_line():
    assert TEXT.count(b"\nprog=") == 1
    assert TEXT.startswith(b"#!/bin/sh\n" + fronts.FRONT_MARK)


def test_the_worker_raises_limits_as_the_front_does():
    floor = re.search(rb"floor=\$\{STUNNEL3_MEMORY_FLOOR:-(\d+)\}", TEXT)
    stack = re.search(rb"raise_soft -s (\d+) ", TEXT)
    assert floor and int(floor[1]) == warm_worker.DEFAULT_FLOOR
    assert stack and int(stack[1]) == warm_worker.STACK_FLOOR


def test_the_worker_takes_over_exactly_the_programs_the_front_offers():
    offered = re.search(rb"\ncase \$prog in ([^)]*)\) .*hand_over", TEXT)
    assert offered, "the front's hand_over line"
    names = {name.strip() for name in offered[1].split(b"|")}
    assert names == set(warm_worker.PROGRAMS)
