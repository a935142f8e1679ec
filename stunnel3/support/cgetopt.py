"""C getopt over stunnel 3.22's option string (+ sg2's), and its error.

Apart from options.py so that makesock can read stunnel's command line on
every connection without paying for options.py's dataclasses (~11 ms):
this module imports only os, which the interpreter has loaded already.
"""

import os


class OptionError(Exception):
    """A bad command line. `text` is 3.22's log line, `status` its exit code."""

    def __init__(self, text: str, status: int = 1, usage_hint: bool = False):
        super().__init__(text)
        self.text = text
        self.status = status
        self.usage_hint = usage_hint  # follow with "Try 'stunnel -h' for more information."
        self.shown = True  # options.parse: the -D level in force lets this LOG3 line out


# 3.22's getopt string, then sg2's additions.
OPTSTRING = "A:a:cp:v:d:fTl:L:r:s:g:t:u:n:N:hC:D:O:E:R:WB:VP:S:o:I:" + "/:iF:"


def _takes_argument(optstring: str) -> dict[str, bool]:
    return {c: optstring[i + 1 : i + 2] == ":" for i, c in enumerate(optstring) if c != ":"}


_WITH_ARGUMENT = _takes_argument(OPTSTRING)


def scan(argv: list[str], operands: list[str], optstring: str = OPTSTRING):
    """C getopt, one option at a time: yields (letter, argument or ""); at the end
    `operands` holds the words that are not options, in their order.

    glibc's getopt, as 3.22 on Linux called it (opterr=0): a cluster `-fiF3` is
    -f -i -F 3; an option that takes an argument takes the rest of its word,
    else the next word whatever it looks like (`-n -`, `-n --`); `--` ends the
    options and is dropped. glibc permutes: a word that is not an option (`-`
    alone is one) is set aside and scanning goes on, so `-l /bin/echo echo -c`
    is client mode, unless POSIXLY_CORRECT is in the environment, which stops
    at the first such word (POSIX). An unknown letter (':' included) or a
    missing argument raises "Illegal option: 'x'": getopt returned '?' with
    optopt for both. Options are yielded as they are met, so that an error or
    -h/-V earlier on the line wins, as in 3.22's switch inside the getopt loop.
    """
    table = _WITH_ARGUMENT if optstring == OPTSTRING else _takes_argument(optstring)
    permute = "POSIXLY_CORRECT" not in os.environ
    set_aside: list[str] = []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            i += 1
            break
        if not word.startswith("-") or word == "-":
            if not permute:
                break
            set_aside.append(word)
            i += 1
            continue
        for j in range(1, len(word)):
            letter = word[j]
            if letter not in table:
                raise OptionError(f"Illegal option: '{letter}'", usage_hint=True)
            if not table[letter]:
                yield letter, ""
            elif j + 1 < len(word):
                yield letter, word[j + 1 :]
                break
            elif i + 1 < len(argv):
                i += 1
                yield letter, argv[i]
            else:
                raise OptionError(f"Illegal option: '{letter}'", usage_hint=True)
        i += 1
    operands[:] = set_aside + argv[i:]


def getopt(argv: list[str], optstring: str = OPTSTRING) -> tuple[list[tuple[str, str]], list[str]]:
    """All of scan() at once: ([(letter, argument)], operands)."""
    operands: list[str] = []
    found = list(scan(argv, operands, optstring))
    return found, operands
