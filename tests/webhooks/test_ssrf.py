"""The SSRF guard as a table: which addresses a webhook may reach, and URLs that are
refused before any connection (no traffic leaves this machine in these tests)."""

from __future__ import annotations

import argparse
import ipaddress
from pathlib import Path

import pytest

from control_plane.settings import ControlPlaneSettings
from control_plane.webhooks.http import WebhookClient, parse_target
from node_agent.settings import AgentSettings
from zapfleet._env import load_settings
from zapfleet.cli import _stack_env
from zapfleet.ssrf import AddressPolicy, UnsafeURLError, check_url

STRICT = AddressPolicy.from_settings(False, [])
TESTS = AddressPolicy.from_settings(False, ["127.0.0.1/32"])


@pytest.mark.parametrize(
    ("address", "refusal"),
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("10.1.2.3", "private"),
        ("172.16.0.9", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("224.0.0.251", "multicast"),
        ("ff02::1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("100.64.0.1", "non-public"),
        ("::ffff:10.0.0.1", "private"),
        ("93.184.216.34", None),
        ("2606:4700::6810:85e5", None),
    ],
)
def test_only_public_addresses_are_allowed_by_default(address: str, refusal: str | None) -> None:
    assert STRICT.refusal(ipaddress.ip_address(address)) == refusal


def test_allowed_networks_and_allow_private_open_exactly_what_they_say() -> None:
    assert TESTS.refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert TESTS.refusal(ipaddress.ip_address("127.0.0.2")) == "loopback"
    development = AddressPolicy.from_settings(True, [])
    assert development.refusal(ipaddress.ip_address("10.0.0.1")) is None
    assert development.refusal(ipaddress.ip_address("127.0.0.1")) is None
    assert development.refusal(ipaddress.ip_address("224.0.0.1")) == "multicast"


@pytest.mark.parametrize(
    ("address", "refusal"),
    [
        ("169.254.169.254", "link-local"),
        ("fe80::1", "link-local"),
        ("::ffff:169.254.169.254", "link-local"),
        ("0.0.0.0", "unspecified"),
        ("0.1.2.3", "unspecified"),
        ("::", "unspecified"),
        ("::ffff:0.0.0.0", "unspecified"),
    ],
)
def test_link_local_and_unspecified_addresses_are_refused_in_every_mode(
    address: str, refusal: str
) -> None:
    """Cloud metadata (169.254.169.254) and 0.0.0.0 (which connects to this host): neither
    the development setting nor an allowed network that covers them opens them."""
    everything = AddressPolicy.from_settings(True, ["0.0.0.0/0", "::/0"])
    for policy in (STRICT, TESTS, everything):
        assert policy.refusal(ipaddress.ip_address(address)) == refusal


async def test_the_refusal_of_a_never_allowed_address_names_no_setting() -> None:
    everything = AddressPolicy.from_settings(True, [])
    with pytest.raises(UnsafeURLError, match="no setting allows them"):
        await check_url("http://169.254.169.254/latest/meta-data/", everything)
    with pytest.raises(UnsafeURLError, match="ZAPFLEET_WEBHOOK_ALLOWED_NETWORKS"):
        await check_url("http://10.0.0.1/", STRICT)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://93.184.216.34/x",
        "file:///etc/passwd",
        "http:///nohost",
        "http://10.0.0.1:99999/",
        "http://[::1/",
        "http://127.0.0.2/hook",
        "gopher://127.0.0.1:6379/_FLUSHALL",
    ],
)
async def test_bad_urls_are_refused_as_unsafe_and_never_crash(url: str) -> None:
    with pytest.raises(UnsafeURLError):
        await check_url(url, TESTS)


async def test_a_name_that_does_not_resolve_is_accepted_at_configuration() -> None:
    await check_url("https://does-not-exist.invalid/hook", STRICT)
    await check_url("http://" + "a" * 300 + ".invalid/", STRICT)  # not even a valid name


@pytest.mark.parametrize(
    "url", ["http://93.184.216.34/a b", "http://93.184.216.34/x\r\nInjected: 1", "http://h/\x7f"]
)
def test_urls_with_spaces_or_controls_cannot_become_requests(url: str) -> None:
    with pytest.raises(UnsafeURLError):
        parse_target(url, "zapfleet")


def test_the_request_head_is_spelled_out_from_the_url() -> None:
    target = parse_target("https://user:p%40ss@example.org:8443/in/hook?x=1", "zf/1")
    assert target.origin == "https://example.org:8443" and target.tls
    assert target.head.startswith(b"POST /in/hook?x=1 HTTP/1.1\r\nHost: example.org:8443\r\n")
    assert b"Authorization: Basic dXNlcjpwQHNz\r\n" in target.head  # user:p@ss
    plain = parse_target("http://[2606:4700::1]/", "zf/1")
    assert plain.head.startswith(b"POST / HTTP/1.1\r\nHost: [2606:4700::1]\r\n")


async def test_the_client_refuses_a_forbidden_literal_before_connecting() -> None:
    client = WebhookClient(TESTS, user_agent="t")
    with pytest.raises(UnsafeURLError, match="loopback"):
        await client.post("http://127.0.0.9:9/x", b"{}", {})
    with pytest.raises(UnsafeURLError, match="link-local"):
        await client.post("http://169.254.169.254/latest", b"{}", {})


@pytest.mark.parametrize(
    "env",
    [
        {"ZAPFLEET_ALLOW_PRIVATE_TARGETS": "true"},
        {"ZAPFLEET_WEBHOOK_ALLOW_PRIVATE": "true"},  # former names, read after an upgrade
        {"ZAPFLEET_MEDIA_ALLOW_PRIVATE": "true"},
    ],
)
def test_one_development_setting_opens_webhooks_and_media_alike(env: dict[str, str]) -> None:
    control_plane = load_settings(ControlPlaneSettings, env={"ZAPFLEET_ADMIN_KEY": "k" * 16, **env})
    agent = load_settings(AgentSettings, env={"ZAPFLEET_NODE_ID": "n1", **env})
    assert control_plane.allow_private_targets and agent.allow_private_targets
    assert not load_settings(AgentSettings, env={"ZAPFLEET_NODE_ID": "n1"}).allow_private_targets


def test_zapfleet_up_sets_the_one_development_setting(tmp_path: Path) -> None:
    args = argparse.Namespace(
        nats_port=1, valkey_port=2, host="127.0.0.1", http_port=3, engine="sim",
        agent_metrics_port=4,
    )  # fmt: skip
    env = _stack_env(args, tmp_path, "a" * 32)
    assert env["ZAPFLEET_ALLOW_PRIVATE_TARGETS"] == "true"
    control_plane = load_settings(ControlPlaneSettings, env=env)
    agent = load_settings(AgentSettings, env=env)
    assert control_plane.allow_private_targets and agent.allow_private_targets
