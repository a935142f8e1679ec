"""engine/bounds.py: every STUNNEL3_ bound read once, a bad value one clear line (issue #18)."""

import pytest

from stunnel3.engine.bounds import SETTINGS, Bounds, Exchanges, SettingError, backend_exit, value


def test_the_defaults():
    bounds = Bounds({})
    assert (bounds.handshake, bounds.idle, bounds.exchange, bounds.session) == (60, 600, 600, 14400)
    assert (bounds.backend_exit, bounds.lines, bounds.rate) == (10, 1000, 100)


def test_the_session_default_carries_a_50_mb_message_on_a_slow_link():
    slow_link = 28_000 / 8  # bytes a second: 28 kbit/s, slower than any modem still in use
    assert Bounds({}).session >= 50_000_000 / slow_link
    # and an exchange gets RFC 5321's 10 minutes for the reply to the end of the data
    assert Bounds({}).exchange >= 600


@pytest.mark.parametrize("name", [n for n in SETTINGS if SETTINGS[n][1] == "seconds"])
@pytest.mark.parametrize(("text", "seconds"), [("0.25", 0.25), ("7", 7.0), (" 30 ", 30.0)])
def test_seconds_may_be_fractions(name, text, seconds):
    assert value(name, {name: text}) == seconds


@pytest.mark.parametrize("name", [n for n in SETTINGS if SETTINGS[n][1] != "seconds"])
def test_lines_are_whole_numbers(name):
    assert value(name, {name: "1"}) == 1  # the limit itself
    with pytest.raises(SettingError):
        value(name, {name: "0"})  # one under it
    with pytest.raises(SettingError):
        value(name, {name: "2.5"})


@pytest.mark.parametrize("text", ["abc", "0", "-5", "", "inf", "nan", "1e400", "10s", "0x10"])
def test_a_bad_timeout_is_one_line_naming_it(text):
    with pytest.raises(SettingError) as raised:
        Bounds({"STUNNEL3_IDLE_TIMEOUT": text})
    assert raised.value.text == (
        f"Illegal idle timeout: STUNNEL3_IDLE_TIMEOUT={text} (seconds above 0)"
    )


def test_each_setting_names_itself_when_bad():
    for name, (what, unit, _) in SETTINGS.items():
        with pytest.raises(SettingError) as raised:
            Bounds({name: "abc"})
        assert raised.value.text == f"Illegal {what}: {name}=abc ({unit} above 0)"


def test_makesocks_keeper_takes_the_default_for_a_bad_value():
    # stunnel, in the same process, refuses to start with the line above
    assert backend_exit({"STUNNEL3_BACKEND_EXIT_TIMEOUT": "abc"}) == 10
    assert backend_exit({"STUNNEL3_BACKEND_EXIT_TIMEOUT": "2"}) == 2


def test_an_exchange_runs_from_when_the_layer_begins_to_await_until_the_backend_moves():
    bounds = Bounds({"STUNNEL3_EXCHANGE_TIMEOUT": "5", "STUNNEL3_SESSION_TIMEOUT": "100"})
    exchanges = Exchanges(bounds, now=1000.0)
    session = (1100.0, "Session time limit reached (100 s, STUNNEL3_SESSION_TIMEOUT)")
    assert exchanges.nearest((1600.0, "idle")) == session
    assert exchanges.nearest((1050.0, "idle")) == (1050.0, "idle")
    exchanges.track(True, 1010.0)
    exchanges.track(True, 1012.0)  # later passes, still awaiting: the same exchange
    assert exchanges.nearest((1600.0, "idle")) == (
        1015.0, "Command/reply exchange timed out (5 s, STUNNEL3_EXCHANGE_TIMEOUT)",
    )  # fmt: skip
    exchanges.moved()  # the backend's bytes
    exchanges.track(True, 1013.0)
    assert exchanges.nearest((1600.0, "idle"))[0] == 1018.0
    exchanges.track(False, 1014.0)
    assert exchanges.nearest((1600.0, "idle")) == session
