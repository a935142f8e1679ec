"""Unit tests of policy.py: what a client's environment (tcprules) makes of -n."""

import pytest

from stunnel3.layers.policy import AUTH, STARTTLS, Starttls, read


@pytest.mark.parametrize(
    "protocol, starttls", [("smtp-", "optional"), ("pop3-", "optional"), ("imap-", "optional"),
                           ("smtp", "required"), ("pop3", "required")],
)  # fmt: skip
def test_without_variables_the_protocol_decides_and_logins_wait_for_tls(protocol, starttls):
    policy, problems = read({}, protocol)
    assert problems == [] and policy.starttls is Starttls(starttls) and not policy.plaintext_auth
    assert policy.describe() == (
        f"Client policy: STARTTLS {starttls} (-n {protocol}), logins only over TLS (the default)"
    )
    assert policy.layer_options() == {
        "require_tls": starttls == "required",
        "offer_tls": True,
        "plaintext_auth": False,
    }


@pytest.mark.parametrize(
    "value, require, offer",
    [
        ("optional", False, True),
        ("required", True, True),
        ("off", False, False),
        ("OFF", False, False),
    ],
)
def test_starttls_for_this_client_overrides_the_protocol_both_ways(value, require, offer):
    for protocol in ("smtp-", "smtp"):
        policy, problems = read({STARTTLS: value}, protocol)
        assert problems == []
        assert policy.layer_options()["require_tls"] is require
        assert policy.layer_options()["offer_tls"] is offer
        assert f"({STARTTLS}={value})" in policy.describe()


def test_plaintext_auth_for_this_client():
    policy, problems = read({AUTH: "plaintext"}, "smtp-")
    assert problems == [] and policy.layer_options()["plaintext_auth"] is True
    assert policy.describe().endswith(f"logins also in plaintext ({AUTH}=plaintext)")
    policy, _ = read({AUTH: "tls"}, "smtp-")
    assert policy.layer_options()["plaintext_auth"] is False


def test_an_empty_value_is_no_value():
    assert read({AUTH: "", STARTTLS: ""}, "smtp-") == read({}, "smtp-")


def test_an_unknown_value_is_one_line_and_the_safe_choice():
    policy, problems = read({AUTH: "yes", STARTTLS: "requird"}, "smtp-")
    assert problems == [
        f"{STARTTLS}='requird' is not optional, required or off: optional, as -n smtp- says",
        f"{AUTH}='yes' is not tls or plaintext: tls, logins only over TLS",
    ]
    assert policy.layer_options() == {
        "require_tls": False,
        "offer_tls": True,
        "plaintext_auth": False,
    }
    required, _ = read({STARTTLS: "nonsense"}, "pop3")
    assert required.starttls is Starttls.REQUIRED  # what -n pop3 says


def test_no_usable_certificate_offers_no_starttls():
    policy, _ = read({}, "smtp")
    assert policy.layer_options(tls_available=False) == {
        "require_tls": True,
        "offer_tls": False,
        "plaintext_auth": False,
    }
    assert policy.describe(tls_available=False).startswith(
        "Client policy: STARTTLS required but not available (no usable certificate)"
    )
    off, _ = read({STARTTLS: "off"}, "smtp-")
    assert "STARTTLS off (STUNNEL3_STARTTLS=off)" in off.describe(tls_available=False)
