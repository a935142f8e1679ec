"""The warm helper, stunnel3-warm (docs/warm.md): helper.py, its loop; worker.py, the handoff.

bin/stunnel3-warm is a front like the others: it runs `stunnel3.warm`'s main (the
module named after its `prog=`, less `stunnel3-`), which is the helper's.
"""


def main(argv: list[str]) -> int:
    from stunnel3.warm.helper import main as helper_main

    return helper_main(argv)
