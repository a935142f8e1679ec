"""unix.py's move_fd: the one copy fixcrio and makesock both place descriptors with."""

import os

from stunnel3 import unix


def test_move_fd_to_another_number_leaves_an_inheritable_copy_and_closes_the_source():
    read_end, write_end = os.pipe()  # close-on-exec, as everything Python opens
    target = os.dup(write_end)
    os.close(target)  # a free number
    unix.move_fd(read_end, target)
    try:
        assert os.get_inheritable(target)
        os.write(write_end, b"x")
        assert os.read(target, 1) == b"x"
        try:
            os.fstat(read_end)
        except OSError:
            pass
        else:
            raise AssertionError("the source is still open")
    finally:
        os.close(target)
        os.close(write_end)


def test_move_fd_onto_itself_only_makes_it_inheritable():
    read_end, write_end = os.pipe()
    try:
        assert not os.get_inheritable(read_end)
        unix.move_fd(read_end, read_end)
        assert os.get_inheritable(read_end)
        os.write(write_end, b"y")
        assert os.read(read_end, 1) == b"y"
    finally:
        os.close(read_end)
        os.close(write_end)
