"""wasmgate router template (Python, componentize-py).

Forwards each message id of `message_map` to its dest, answers message 150 itself
(`router:python:<body>`), and rejects any other id with `unknown_message`. Config keys:
`default_dest` (optional integer): where unmapped ids go instead.

componentize-py calls each export on a fresh instance of the class, so state lives at module
level, set by `init`.
"""
import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import router

ROUTES: dict[int, int] = {}
DEFAULT_DEST: int | None = None
REPLY_MSG_ID = 150


class Router(exports.Router):
    def init(self, config: str, message_map: list[router.MessageRoute]) -> None:
        global DEFAULT_DEST
        settings = json.loads(config or "{}")
        dest = settings.get("default_dest")
        valid = isinstance(dest, int) and not isinstance(dest, bool) and 0 <= dest < 2**32
        if dest is not None and not valid:
            raise Err("config: default_dest must be a dest id (an integer)")
        DEFAULT_DEST = dest
        ROUTES.clear()
        ROUTES.update({route.msg_id: route.dest_id for route in message_map})

    def route(self, session, packet) -> router.Decision:
        if packet.msg_id == REPLY_MSG_ID:
            body = b"router:python:" + bytes(packet.body)
            return router.Decision_Reply(router.Reply(packet.msg_id, body))
        dest = ROUTES.get(packet.msg_id, DEFAULT_DEST)
        if dest is None:
            return router.Decision_Reject(router.RouteError_UnknownMessage())
        return router.Decision_Forward(dest)
