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


def test_spawn_program_searches_path_as_exec_program_and_spawns_only_what_is_there(
    tmp_path, monkeypatch
):
    """djb's search (candidates) with exec_program's choice of error, and a directory
    where the name is not costs no spawn: posix_spawn is called for what exists."""
    import errno

    from stunnel3.support import limits

    spawned: list[bytes] = []
    real = os.posix_spawn

    def counted(path, *args, **kwargs):
        spawned.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "posix_spawn", counted)
    monkeypatch.delenv(limits.ENV, raising=False)  # no limits to give back: no prlimit
    (tmp_path / "tool").write_text("#!/bin/sh\nexit 0\n")  # not executable: EACCES
    (tmp_path / "file").write_text("")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "tool").write_text("#!/bin/sh\nexit 7\n")
    (bin_dir / "tool").chmod(0o755)
    a, b, c = "/nonexistent", f"{tmp_path}/file", str(tmp_path)  # ENOENT, ENOTDIR, EACCES
    monkeypatch.setenv("PATH", f"{a}:{a}/deeper:{c}:{b}:{bin_dir}")
    error = unix.spawn_program(["tool"], [])  # EACCES goes on, ENOTDIR ends the search
    assert isinstance(error, OSError) and error.errno == errno.ENOTDIR
    assert spawned == [f"{c}/tool".encode(), f"{b}/tool".encode()]  # what exec itself refuses
    spawned.clear()
    monkeypatch.setenv("PATH", f"{a}:{a}/deeper:{c}:{bin_dir}")
    pid = unix.spawn_program(["tool"], [])
    assert isinstance(pid, int)
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 7
    assert spawned == [f"{c}/tool".encode(), f"{bin_dir}/tool".encode()]
    spawned.clear()
    monkeypatch.setenv("PATH", f"{a}:{a}/deeper")
    error = unix.spawn_program(["tool"], [])
    assert isinstance(error, OSError) and error.errno == errno.ENOENT
    assert error.strerror == "file does not exist" and spawned == []
