"""fronts.py: which program and which Python a bin/ front runs, by the front's own rule.

Each case is also run through the real sh front (its Python replaced by a
script that says who it is), so that fronts.py and the front cannot disagree.
"""

import os
import subprocess
from pathlib import Path

import pytest

from stunnel3.support import fronts

ROOT = Path(__file__).resolve().parents[2]


def install(directory: Path, prog: str = "fixcrio", python: str | None = None) -> bytes:
    """A copy of bin/'s front for prog in directory, and stunnel3-python naming python."""
    directory.mkdir(parents=True, exist_ok=True)
    text = (ROOT / "bin" / "stunnel").read_text()
    front = directory / prog
    front.write_text(text.replace("\nprog=stunnel\n", f"\nprog={prog}\n"))
    front.chmod(0o755)
    if python is not None:
        (directory / "stunnel3-python").write_text(f"#!{python}\n")
    return bytes(front)


def fake_python(path: Path) -> str:
    """An 'interpreter' that prints its own name: what the front started."""
    path.write_text('#!/bin/sh\necho "$0"\n')
    path.chmod(0o755)
    return str(path)


def started(front: bytes, cwd: Path, env: dict | None = None) -> str:
    done = subprocess.run([front], cwd=cwd, capture_output=True, text=True, timeout=30,
                          env={"PATH": "/usr/bin:/bin", **(env or {})})  # fmt: skip
    return done.stdout.strip() or done.stderr.strip()


def test_a_front_is_known_by_its_mark_and_program(tmp_path):
    assert fronts.program(install(tmp_path, "makesock")) == b"makesock"
    assert fronts.program(b"/bin/sh") is None
    assert fronts.program(bytes(tmp_path / "none")) is None
    (tmp_path / "stunnel3-python").write_text("#!/usr/bin/python3\n")
    assert fronts.program(bytes(tmp_path / "stunnel3-python")) is None


def test_the_python_is_the_one_recorded_beside_the_front(tmp_path):
    python = fake_python(tmp_path / "py")
    front = install(tmp_path / "bin", python=python)
    assert fronts.python(front, {}) == python.encode()
    assert started(front, tmp_path) == python


def test_stunnel3_python_overrides_the_record(tmp_path):
    python, other = fake_python(tmp_path / "py"), fake_python(tmp_path / "other")
    front = install(tmp_path / "bin", python=python)
    environ = {b"STUNNEL3_PYTHON": other.encode()}
    assert fronts.python(front, environ) == other.encode()
    assert started(front, tmp_path, {"STUNNEL3_PYTHON": other}) == other


def test_through_a_link_the_record_beside_the_target(tmp_path):
    python = fake_python(tmp_path / "py")
    front = install(tmp_path / "bin", python=python)
    (tmp_path / "usr-local-bin").mkdir()
    link = tmp_path / "usr-local-bin" / "fixcrio"
    link.symlink_to(os.fsdecode(front))
    assert fronts.python(bytes(link), {}) == python.encode()
    assert started(bytes(link), tmp_path) == python
    other = fake_python(tmp_path / "other")  # a record beside the link comes first
    (tmp_path / "usr-local-bin" / "stunnel3-python").write_text(f"#!{other}\n")
    assert fronts.python(bytes(link), {}) == other.encode()
    assert started(bytes(link), tmp_path) == other


def test_relative_names_are_the_fronts_own(tmp_path):
    python = fake_python(tmp_path / "py")
    install(tmp_path / "bin", python="../py")  # relative to the front's working directory
    cwd = tmp_path / "bin"
    assert fronts.python(b"fixcrio", {}, bytes(cwd)) == bytes(cwd / "../py")
    done = subprocess.run(["sh", "fixcrio"], cwd=cwd, capture_output=True, text=True, timeout=30)
    assert done.stdout.strip() == "../py" and os.path.samefile(cwd / "../py", python)


@pytest.mark.parametrize(
    "record, expected",
    [(None, None), ("", None), ("\n", None), ("  #!/x/python3 \t\nmore\n", b"/x/python3"),
     ("#!/x/python3", b"/x/python3"), ("/x/python3\n", b"/x/python3")],
    ids=["missing", "empty", "blank", "spaces", "no-newline", "no-hashbang"],
)  # fmt: skip
def test_the_record_is_read_as_the_fronts_read_reads_it(tmp_path, record, expected):
    front = install(tmp_path)
    if record is not None:
        (tmp_path / "stunnel3-python").write_text(record)
    assert fronts.python(front, {}) == expected
    said = started(front, tmp_path)
    if expected is None:
        why = "file does not exist" if record is None else "it names no Python"
        assert said == f"fixcrio: fatal: unable to read {tmp_path}/stunnel3-python: {why}"
    else:
        assert said == f"fixcrio: fatal: unable to run {expected.decode()}: file does not exist"


def test_a_venvs_python_is_its_own(tmp_path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    (venv / "bin" / "python3").symlink_to("/usr/bin/python3")
    system = fronts.interpreter("/usr/bin/python3")
    ours = fronts.interpreter(str(venv / "bin" / "python3"))
    assert ours[0] == system[0] and ours[1] == str(venv.resolve()) and system[1] == ""
