"""The SSRF guard as a table: which addresses a webhook may reach, and URLs that are
refused before any connection; then names — with several addresses, or rebinding between
configuration and delivery — against real HTTP receivers on loopback (no traffic leaves
this machine in these tests: names get their addresses from the system resolver
(``localhost``) or from a resolver the test passes in)."""

from __future__ import annotations

import argparse
import ipaddress
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from control_plane.settings import ControlPlaneSettings
from control_plane.webhooks.http import WebhookClient, parse_target
from node_agent.settings import AgentSettings
from tests.conftest import WebhookReceiver
from zapfleet._env import load_settings
from zapfleet.cli import _stack_env
from zapfleet.ssrf import AddressPolicy, IPAddress, Resolver, UnsafeURLError, check_url

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


def answering(answers: list[str]) -> Resolver:
    """A resolver that gives every name the addresses in ``answers`` (as they are at the
    time of the lookup: a test may change them, as a rebinding DNS server would)."""

    async def resolver(host: str, port: int) -> list[IPAddress]:
        return [ipaddress.ip_address(a) for a in answers]

    return resolver


@pytest.mark.parametrize(
    ("answers", "refused"),
    [
        (["93.184.216.34", "10.0.0.1"], "10.0.0.1"),
        (["10.0.0.1", "93.184.216.34"], "10.0.0.1"),
        (["2606:4700::6810:85e5", "93.184.216.34", "169.254.169.254"], "169.254.169.254"),
        (["93.184.216.34", "::ffff:127.0.0.1"], "::ffff:7f00:1"),
    ],
)
async def test_a_name_is_refused_when_any_of_its_addresses_is_not_public(
    answers: list[str], refused: str
) -> None:
    """Guarantee: every resolved address must be public — one bad record among good
    ones is enough to refuse, wherever it sits in the answer."""
    with pytest.raises(UnsafeURLError, match=re.escape(f"hooks.example.com ({refused})")):
        await check_url("https://hooks.example.com/in", STRICT, resolver=answering(answers))


async def test_a_name_whose_every_address_is_public_is_accepted() -> None:
    answers = ["93.184.216.34", "2606:4700::6810:85e5"]
    addresses = await check_url("https://hooks.example.com/in", STRICT, resolver=answering(answers))
    assert [str(a) for a in addresses] == answers


@pytest.fixture
def forbidden_receiver(webhook_receiver: WebhookReceiver) -> Iterator[WebhookReceiver]:
    """A second receiver on 127.0.0.2, same port: loopback outside the allowed /32."""
    receiver = WebhookReceiver(port=webhook_receiver.port, host="127.0.0.2")
    yield receiver
    receiver.close()


async def test_the_client_refuses_at_connect_time_a_name_that_resolves_to_loopback(
    webhook_receiver: WebhookReceiver,
) -> None:
    """Guarantee: the connect-time filter — ``localhost`` is a name, so nothing refuses
    it before the connection; only the check of the addresses it resolves to does."""
    url = f"http://localhost:{webhook_receiver.port}/hook"
    reachable = WebhookClient(TESTS, user_agent="t")  # 127.0.0.1 allowed: the name works
    strict = WebhookClient(STRICT, user_agent="t")
    try:
        assert await reachable.post(url, b"{}", {}) == 200
        with pytest.raises(UnsafeURLError, match="localhost resolves to a loopback address"):
            await strict.post(url, b"{}", {})
    finally:
        await reachable.close()
        await strict.close()
    assert webhook_receiver.calls == 1  # only the allowed client's


async def test_a_name_rebound_to_loopback_after_configuration_is_refused_at_delivery(
    webhook_receiver: WebhookReceiver,
) -> None:
    """DNS rebinding: the name was public when the webhook was configured, and resolves
    to a loopback address when the delivery connects."""
    answers = ["93.184.216.34"]
    url = f"http://hooks.example.com:{webhook_receiver.port}/hook"
    await check_url(url, STRICT, resolver=answering(answers))  # configuration: accepted
    answers[0] = "127.0.0.1"
    client = WebhookClient(STRICT, user_agent="t", resolver=answering(answers))
    try:
        with pytest.raises(UnsafeURLError, match=re.escape("loopback address (127.0.0.1)")):
            await client.post(url, b"{}", {})
    finally:
        await client.close()
    assert webhook_receiver.calls == 0


async def test_the_client_dials_only_the_allowed_addresses_of_a_name(
    webhook_receiver: WebhookReceiver, forbidden_receiver: WebhookReceiver
) -> None:
    """A name with an allowed and a refused address: the delivery goes to the allowed
    one, whatever the order of the answer, and the refused one never sees a request."""
    url = f"http://hooks.example.com:{webhook_receiver.port}/hook"
    for answers in (["127.0.0.2", "127.0.0.1"], ["127.0.0.1", "127.0.0.2"]):
        client = WebhookClient(TESTS, user_agent="t", resolver=answering(answers))
        try:
            assert await client.post(url, b"{}", {}) == 200
        finally:
            await client.close()
    assert forbidden_receiver.calls == 0
    assert webhook_receiver.calls == 2


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
