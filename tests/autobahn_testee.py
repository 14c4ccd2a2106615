"""netconn's WebSocket as an Autobahn|Testsuite testee (run by tests/test_autobahn.py).

``client HOST PORT AGENT``: run every case of a ``wstest -m fuzzingserver``,
echoing each message, then ask it to write its reports.
``server HOST PORT``: an echo server for ``wstest -m fuzzingclient``; prints
``listening`` once bound and runs until terminated.
"""

from __future__ import annotations

import asyncio
import sys

import netconn as nc

PARAMETERS = nc.Parameters(receive_buffer=8 << 20, send_buffer=8 << 20)


def websocket(inner: nc.Stack, path: str = "/") -> nc.WebSocket:
    # 16 MiB messages (cases 9.*) must fit; the limit is still a bound.
    return nc.WebSocket(
        inner, path=path, max_message_size=64 << 20, ping_interval=None, close_timeout=5.0
    )


async def echo(conn: nc.Connection[nc.WebSocket]) -> None:
    """Send every message back (text as text) until the peer closes or fails."""
    try:
        while True:
            message = await conn.receive_message()
            opcode = message.metadata["opcode"]
            if opcode == "close":
                return
            if opcode == "text":
                await conn.send(message.content.decode())
            else:
                await conn.send(message.content)
    except nc.NetconnError:
        return


async def run_case(host: str, port: int, path: str) -> list[nc.Message]:
    """Connect to ``path``; echo when asked, and return what arrived."""
    endpoint = nc.Endpoint.host_port(host, port)
    conn = nc.Connection(endpoint, websocket(nc.TCP(no_delay=True), path), PARAMETERS)
    received: list[nc.Message] = []
    try:
        await conn.wait_ready(timeout=30)
        if path.startswith("/runCase"):
            await echo(conn)
        else:
            while True:
                message = await conn.receive_message()
                received.append(message)
                if message.metadata["opcode"] == "close":
                    break
    except nc.NetconnError:
        pass
    finally:
        await conn.cancel()
    return received


async def case_count(host: str, port: int) -> int:
    """Ask the fuzzing server how many cases it runs (waiting for it to start)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    while not (messages := await run_case(host, port, "/getCaseCount")):
        if loop.time() > deadline:
            raise SystemExit(f"no fuzzing server at {host}:{port}")
        await asyncio.sleep(0.2)
    return int(messages[0].content)


async def client(host: str, port: int, agent: str) -> None:
    count = await case_count(host, port)
    for case in range(1, count + 1):
        await run_case(host, port, f"/runCase?case={case}&agent={agent}")
    await run_case(host, port, f"/updateReports?agent={agent}")
    print(f"ran {count} cases", flush=True)


async def server(host: str, port: int) -> None:
    stack = websocket(nc.TCP(no_delay=True))
    async with nc.Listener(stack, host=host, port=port, parameters=PARAMETERS) as listener:
        print("listening", flush=True)
        await listener.run(echo)


def main() -> None:
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "client":
        asyncio.run(client(host, port, sys.argv[4]))
    else:
        asyncio.run(server(host, port))


if __name__ == "__main__":
    main()
