"""Which side of a warm fork writes which pages: the helper after it, or the worker.

    python3 bench/fork_pages.py [--calls N [--warm]] [--no-threading-hook]   # as root

Loads what the warm helper loads (helper._preload), freezes the collector as the helper
does, then forks a child that stops itself at once (after `--calls N`: N functions made
before the fork, each called once; with `--warm`, 20 times before the fork too). From
`/proc/PID/pagemap` before and after, a page of the parent's private writable memory whose
frame changed in the parent was written by the parent after the fork, one whose frame
changed in the child by the child: each is a page the two no longer share. Prints those
pages per mapping, in KiB.

`--no-threading-hook` empties threading's own after-fork function for the measurement
(cryptography's OpenSSL binding imports threading, so every forked Python runs it), to
show what it costs a worker. Memory only: needs root (frame numbers), no lock.
"""

import gc
import os
import signal
import struct
import sys
import time

PAGE = os.sysconf("SC_PAGE_SIZE")
PRESENT, FRAME = 1 << 63, (1 << 55) - 1


def writable_private() -> list[tuple[int, int, str]]:
    """(start, end, name) of this process's private writable mappings."""
    found = []
    with open("/proc/self/maps") as maps:
        for line in maps:
            words = line.split(None, 5)
            if "w" in words[1] and words[1].endswith("p"):
                start, end = (int(edge, 16) for edge in words[0].split("-"))
                name = words[5].strip().rsplit("/", 1)[-1] if len(words) > 5 else "[anon]"
                found.append((start, end, name))
    return found


def frames(pid: int | str, mappings: list[tuple[int, int, str]]) -> list[bytes]:
    """The raw pagemap entries of each mapping."""
    with open(f"/proc/{pid}/pagemap", "rb", buffering=0) as pagemap:
        taken = []
        for start, end, _ in mappings:
            pagemap.seek(start // PAGE * 8)
            taken.append(pagemap.read((end - start) // PAGE * 8))
        return taken


def written(before: bytes, after: bytes) -> int:
    """Pages present before whose frame is another one after."""
    count = 0
    pairs = zip(struct.iter_unpack("<Q", before), struct.iter_unpack("<Q", after), strict=True)
    for (old,), (new,) in pairs:
        if old & PRESENT and new & PRESENT and old & FRAME != new & FRAME:
            count += 1
    return count


def main(argv: list[str]) -> int:
    calls = int(argv[argv.index("--calls") + 1]) if "--calls" in argv else 0
    sys.argv = ["stunnel3-warm"]
    from stunnel3.warm import helper

    helper.say = lambda text: None
    helper._preload()
    if "--no-threading-hook" in argv:
        import threading

        threading._after_fork.__code__ = (lambda: None).__code__  # type: ignore[attr-defined]
    made: dict = {}
    exec("".join(f"def f{n}(x):\n    return x + {n}\n" for n in range(calls)), made)
    functions = [made[f"f{n}"] for n in range(calls)]
    for _ in range(20 if "--warm" in argv else 0):
        for function in functions:
            function(1)
    gc.freeze()
    mappings = writable_private()
    before = frames("self", mappings)
    child = os.fork()
    if child == 0:
        for function in functions:
            function(1)
        os.kill(os.getpid(), signal.SIGSTOP)
        os._exit(0)
    try:
        time.sleep(0.3)
        parent, theirs = frames("self", mappings), frames(child, mappings)
    finally:
        os.kill(child, signal.SIGKILL)  # stopped, or not yet: never left behind
        os.waitpid(child, 0)
    by_name: dict[str, list[int]] = {}
    for (_, _, name), old, mine, its in zip(mappings, before, parent, theirs, strict=True):
        counts = by_name.setdefault(name, [0, 0])
        counts[0] += written(old, mine)
        counts[1] += written(old, its)
    kib = PAGE // 1024
    print(f"{'mapping':32} {'parent wrote':>12} {'child wrote':>12}  (KiB, {calls} calls)")
    for name, (mine, its) in sorted(by_name.items(), key=lambda item: -sum(item[1])):
        if mine or its:
            print(f"{name[:32]:32} {mine * kib:12} {its * kib:12}")
    total = [sum(counts[side] for counts in by_name.values()) * kib for side in (0, 1)]
    print(f"{'all':32} {total[0]:12} {total[1]:12}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
