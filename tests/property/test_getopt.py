"""Our getopt agrees with Python's on random argv: getopt.gnu_getopt (glibc's
permuting getopt, what 3.22 on Linux ran) and, under POSIXLY_CORRECT,
getopt.getopt (POSIX: stop at the first operand). tests/oracle holds the same
rule against the real 3.22.

The words are drawn from stunnel's option alphabet: flags, options with attached
or separate arguments, clusters, arguments that look like options, unknown
letters, `-`, `--`, long-looking words and plain operands.
"""

import getopt as reference
import os
from unittest import mock

from hypothesis import event, given, settings
from hypothesis import strategies as st

from stunnel3.options import OPTSTRING, OptionError, getopt

LETTERS = sorted(set(OPTSTRING) - {":"})
UNKNOWN = list("xyzQ9:-")  # '-' inside a cluster, ':' never an option
FLAG_LETTERS = [c for c in LETTERS if f"{c}:" not in OPTSTRING]

letter = st.sampled_from(LETTERS + UNKNOWN)
value = st.sampled_from(["", "3", "ssl", "smtp-", "-", "--", "-f", "-n", "x:y", "[::1]:25"])


@st.composite
def word(draw):
    kind = draw(st.integers(0, 6))
    if kind == 0:  # one option, maybe with its argument attached
        return "-" + draw(letter) + draw(st.sampled_from(["", "", "ssl", "3", "-x"]))
    if kind == 1:  # a cluster of flags, maybe ending in an option that takes an argument
        flags = draw(st.lists(st.sampled_from(FLAG_LETTERS), min_size=1, max_size=4))
        return "-" + "".join(flags) + draw(st.sampled_from(["", "F3", "n", "Q", "/ssl"]))
    if kind == 2:
        return draw(value)
    if kind == 3:
        return draw(st.sampled_from(["-", "--", "--help", "--x=1"]))
    if kind == 4:
        return draw(st.sampled_from(["prog", "argv0", "smtp", "3", "a b", ""]))
    return "-" + draw(letter)


argvs = st.lists(word(), max_size=10)


@settings(max_examples=1000)
@given(argvs, st.booleans())
def test_agrees_with_c_getopt(argv, posix):
    expected, ours = both(argv, posix)
    event("refused" if expected is None else f"accepted, operands: {bool(expected[1])}")
    assert ours == expected, argv


def both(argv, posix=False):
    """(Python's getopt, ours) on argv, each None where it refuses the line."""
    environment = {"POSIXLY_CORRECT": "1"} if posix else {}
    with mock.patch.dict(os.environ, environment):
        if not posix:
            os.environ.pop("POSIXLY_CORRECT", None)
        reference_getopt = reference.getopt if posix else reference.gnu_getopt
        try:
            expected = reference_getopt(argv, OPTSTRING)
        except reference.GetoptError:
            expected = None
        try:
            found, operands = getopt(argv)
        except OptionError as error:
            assert error.text.startswith("Illegal option: '")
            assert error.status == 1 and error.usage_hint
            return expected, None
    return expected, ([("-" + opt, arg) for opt, arg in found], operands)


def test_named_cases_agree():
    """The cases the property is about, spelled out (hypothesis finds them too)."""
    cases = {
        "cluster": ["-fiF3"],
        "attached": ["-/ssl", "-F3"],
        "dash argument": ["-n", "-", "-F", "--"],
        "options after an operand": ["prog", "-f"],
        "double dash": ["-f", "--", "-f"],
        "missing argument": ["-p"],
        "unknown": ["-Q"],
        "unknown after an operand": ["-l", "/bin/echo", "echo", "-x"],
    }
    for posix in (False, True):
        for argv in cases.values():
            expected, ours = both(argv, posix)
            assert ours == expected, (argv, posix)


def test_permutation_and_posixly_correct():
    """glibc's rule, and POSIX's: what `-l /bin/echo echo -c` means to each."""
    argv = ["-l", "/bin/echo", "echo", "-c", "--", "-f"]
    assert both(argv)[1] == ([("-l", "/bin/echo"), ("-c", "")], ["echo", "-f"])
    assert both(argv, posix=True)[1] == ([("-l", "/bin/echo")], ["echo", "-c", "--", "-f"])
