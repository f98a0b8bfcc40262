"""The hot-path Valkey client: pipelining, scripts, errors and reconnection, on a real
valkey-server (and under uvloop, which the control plane runs on)."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from control_plane.resp import FastValkey, ReplyError, _Incomplete, encode_command, parse


def test_replies_are_parsed_only_when_complete() -> None:
    reply = b"*3\r\n$3\r\nabc\r\n:42\r\n$-1\r\n"
    assert parse(reply, 0) == ([b"abc", 42, None], len(reply))
    for cut in range(1, len(reply)):
        with pytest.raises(_Incomplete):
            parse(reply[:cut], 0)
    error, _ = parse(b"-NOSCRIPT no such script\r\n", 0)
    assert isinstance(error, ReplyError) and str(error).startswith("NOSCRIPT")
    assert (
        encode_command(("SET", "k", b"v", 5))
        == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n$1\r\n5\r\n"
    )


def run(coro_factory: object) -> None:
    uvloop.run(coro_factory())  # type: ignore[operator]


def test_concurrent_commands_share_one_connection_in_order(valkey_url: str) -> None:
    async def scenario() -> None:
        client = FastValkey(valkey_url)
        keys = [f"resp-test:{i}" for i in range(200)]
        await asyncio.gather(*(client.execute("SET", k, k, "PX", 10_000) for k in keys))
        values = await asyncio.gather(*(client.execute("GET", k) for k in keys))
        assert values == [k.encode() for k in keys]
        clients = await client.execute("CLIENT", "LIST")
        assert clients.count(b"cmd=client") == 1
        with pytest.raises(ReplyError):
            await client.execute("INCR", "resp-test:0")  # not an integer
        assert await client.execute("PING") == b"PONG"  # the connection survives errors
        await client.close()

    run(scenario)


def test_scripts_load_on_first_use_and_the_client_reconnects(valkey_url: str) -> None:
    async def scenario() -> None:
        client = FastValkey(valkey_url)
        script = "return {KEYS[1], ARGV[1], redis.call('GET', KEYS[1])}"
        await client.execute("SCRIPT", "FLUSH")
        assert await client.evalsha(script, ["resp-test:none"], ["x"]) == [
            b"resp-test:none",
            b"x",
            None,
        ]
        my_id = await client.execute("CLIENT", "ID")
        killer = FastValkey(valkey_url)
        await killer.execute("CLIENT", "KILL", "ID", my_id)
        await asyncio.sleep(0.05)
        assert await client.execute("PING") == b"PONG"  # a new connection
        assert await client.execute("CLIENT", "ID") != my_id
        await client.close()
        await killer.close()

    run(scenario)
