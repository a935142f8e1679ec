"""setup_scripts: the run files stunnel3-setup writes, and reading back what it wrote.

Rules over every value an administrator can give: what is written is read back
the same (a re-run keeps the first run's choices), a file we wrote is known as
ours and an edited one is not, and no run file we can write switches ids after
TLS starts (issue #18: -s/-g without -i in inetd mode).
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stunnel3.setup import scripts as setup_scripts
from stunnel3.setup.scripts import (
    LOG_RUN,
    RUN_SCRIPT,
    RUN_VARIABLES,
    WARM_RUN_SCRIPT,
    WARM_RUN_VARIABLES,
)

value = st.text(st.characters(blacklist_categories=["Cs"], blacklist_characters="\n\0"))
variables = st.fixed_dictionaries({name: value for name in RUN_VARIABLES})


@given(variables)
def test_what_is_written_is_read_back_and_known_as_ours(chosen):
    run = setup_scripts.render_run(chosen)
    assert setup_scripts.read_run(run) == chosen
    assert setup_scripts.is_ours(run)
    assert not setup_scripts.is_ours(run + "# edited\n")
    assert not setup_scripts.is_ours(run.replace("exec softlimit", "exec  softlimit"))


@given(variables)
def test_no_run_file_we_write_switches_ids_late(chosen):
    run = setup_scripts.render_run(chosen)
    (argv,) = setup_scripts.stunnel_words(run)
    assert argv[-2:] == ["-F", "3"]  # up to makesock's separator, not beyond
    assert setup_scripts.late_id_switches(run) == []


@pytest.mark.parametrize(
    "line, late",
    [
        ("stunnel -s 1 -g 1 -i -F 3", False),
        ("stunnel -fiF3 -s 1", False),  # a cluster, as getopt reads it
        ("stunnel -s 1 -g 1 -F 3", True),
        ("stunnel -g 1 -F 3", True),
        ("stunnel -s 1 -d 465 -r 25", False),  # daemon mode: 3.22 switches after bind
        ("stunnel -F 3 -makesock_connect_to setuidgid -s 1", False),  # makesock's part
        ("stunnel -x -s 1 -i", True),  # stunnel would not start: never written either
    ],
)
def test_late_id_switches_are_found(line, late):
    run = RUN_SCRIPT.replace(
        'stunnel -D 7 -/ ssl -s "$SSLUID" -g "$SSLGID" -i -R seed -p stunnel.pem -n smtp- -f -F 3',
        line,
    )
    assert run != RUN_SCRIPT
    assert bool(setup_scripts.late_id_switches(run)) == late


def test_the_warm_run_file_has_only_its_path():
    run = setup_scripts.render_run({"PATH": "/a b:/c"}, WARM_RUN_SCRIPT, WARM_RUN_VARIABLES)
    assert setup_scripts.read_run(run, WARM_RUN_VARIABLES) == {"PATH": "/a b:/c"}
    assert setup_scripts.is_ours(run, WARM_RUN_SCRIPT, WARM_RUN_VARIABLES)
    assert not setup_scripts.is_ours(run, RUN_SCRIPT, RUN_VARIABLES)
    with pytest.raises(setup_scripts.Unsettable):
        setup_scripts.render_run({"PORT": "25"}, WARM_RUN_SCRIPT, WARM_RUN_VARIABLES)
    with pytest.raises(setup_scripts.Unsettable):
        setup_scripts.render_run({"PATH": "/a\n/b"}, WARM_RUN_SCRIPT, WARM_RUN_VARIABLES)


def test_the_log_account_is_read_back_from_a_log_run_of_ours():
    assert setup_scripts.log_user(LOG_RUN.format(user="qmaill")) == "qmaill"
    assert setup_scripts.log_user(LOG_RUN.format(user="qmaill") + "# edited\n") is None
    assert setup_scripts.log_user("#!/bin/sh\nexec multilog t ./main\n") is None
