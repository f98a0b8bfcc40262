"""The baseline of `bench api`: bare Litestar, one JSON POST endpoint that decodes the
same message body and answers like a send, served by granian with the same settings as
the control plane (ASGI, uvloop, same worker count and backlog).

``python -m bench.bare_app <port> <workers>``"""

from __future__ import annotations

import secrets
import sys

from litestar import Litestar, post

from control_plane.models import MessageAccepted, OutboundMessage


@post("/bare/messages", status_code=202)
async def accept(data: OutboundMessage) -> MessageAccepted:
    return MessageAccepted(message_id="m_" + secrets.token_hex(10), session_id="bare")


def app() -> Litestar:
    return Litestar(route_handlers=[accept], debug=False)


def main() -> None:
    from granian.constants import Interfaces, Loops
    from granian.server import Server

    port, workers = int(sys.argv[1]), int(sys.argv[2])
    Server(
        "bench.bare_app:app",
        address="127.0.0.1",
        port=port,
        interface=Interfaces.ASGI,
        workers=workers,
        loop=Loops.uvloop,
        factory=True,
        log_access=False,
        backlog=2048,
    ).serve()


if __name__ == "__main__":
    main()
