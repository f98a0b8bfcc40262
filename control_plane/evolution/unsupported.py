"""Evolution v2 routes zapfleet does not offer: each answers 501 in Evolution's error
shape, naming the route (docs/evolution.md lists them), instead of a bare 404 a client
would take for a missing instance."""

from __future__ import annotations

from typing import Any

from litestar import HttpMethod, Request, route
from litestar.handlers import HTTPRouteHandler

from control_plane.evolution._common import EvolutionError

# (method, path) of Evolution v2 routes without a zapfleet counterpart
UNSUPPORTED: tuple[tuple[str, str], ...] = (
    ("POST", "/message/sendStatus/{instance:str}"),
    ("POST", "/message/sendList/{instance:str}"),
    ("POST", "/message/sendButtons/{instance:str}"),
    ("POST", "/message/sendTemplate/{instance:str}"),
    ("POST", "/message/sendPtv/{instance:str}"),
    ("POST", "/chat/archiveChat/{instance:str}"),
    ("POST", "/chat/markChatUnread/{instance:str}"),
    ("POST", "/chat/fetchBusinessProfile/{instance:str}"),
    ("POST", "/chat/findStatusMessage/{instance:str}"),
    ("POST", "/call/offer/{instance:str}"),
    ("GET", "/label/findLabels/{instance:str}"),
    ("POST", "/label/handleLabel/{instance:str}"),
    ("POST", "/group/sendInvite/{instance:str}"),
    ("POST", "/proxy/set/{instance:str}"),
    ("GET", "/proxy/find/{instance:str}"),
    ("POST", "/websocket/set/{instance:str}"),
    ("GET", "/websocket/find/{instance:str}"),
    ("POST", "/rabbitmq/set/{instance:str}"),
    ("GET", "/rabbitmq/find/{instance:str}"),
    ("POST", "/sqs/set/{instance:str}"),
    ("GET", "/sqs/find/{instance:str}"),
    ("POST", "/chatwoot/set/{instance:str}"),
    ("GET", "/chatwoot/find/{instance:str}"),
    ("POST", "/typebot/start/{instance:str}"),
)

# Evolution's chatbot integrations: every one has the same routes
# (src/api/integrations/chatbot/typebot/routes/typebot.router.ts and its siblings), the
# n8n node calls most of them (create, find, fetch, update, delete, fetchSessions,
# changeStatus)
CHATBOTS = ("typebot", "openai", "dify", "flowise", "n8n", "evolutionBot", "evoai")
CHATBOT_ROUTES: tuple[tuple[str, str], ...] = (
    ("POST", "create/{instance:str}"),
    ("GET", "find/{instance:str}"),
    ("GET", "fetch/{bot_id:str}/{instance:str}"),
    ("PUT", "update/{bot_id:str}/{instance:str}"),
    ("DELETE", "delete/{bot_id:str}/{instance:str}"),
    ("POST", "settings/{instance:str}"),
    ("GET", "fetchSettings/{instance:str}"),
    ("POST", "changeStatus/{instance:str}"),
    ("GET", "fetchSessions/{bot_id:str}/{instance:str}"),
    ("POST", "ignoreJid/{instance:str}"),
)
UNSUPPORTED += tuple(
    (method, f"/{bot}/{path}") for bot in CHATBOTS for method, path in CHATBOT_ROUTES
)


def shown(path: str) -> str:
    return path.replace("{instance:str}", "{instance}").replace("{bot_id:str}", "{botId}")


def unsupported_route(method: str, path: str) -> HTTPRouteHandler:
    async def not_supported(request: Request[Any, Any, Any]) -> None:
        raise EvolutionError(
            501,
            [
                f"{method} {shown(path)} is not supported by zapfleet's Evolution API "
                "facade (docs/evolution.md lists what is)"
            ],
        )

    return route(path, http_method=[HttpMethod(method)], status_code=501)(not_supported)


ROUTES = [unsupported_route(method, path) for method, path in UNSUPPORTED]
