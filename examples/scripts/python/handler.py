"""wasmgate handler template (Python, componentize-py): a stateful counter.

Answers each packet with `python:<count>:<body>`, where count is how many packets this
handler has handled, across swaps: `snapshot` gives the count as decimal ASCII and `restore`
reads it back, the same format as the other languages' templates, so the state survives a
swap from one language to another. Mark it `stateful = true` in the manifest.
"""
from wit_world import exports
from wit_world.exports import handler

STATE = {"count": 0}


class Handler(exports.Handler):
    def init(self, config: str) -> None:
        pass

    def handle(self, session, packet) -> handler.Outcome:
        STATE["count"] += 1
        body = f"python:{STATE['count']}:".encode() + bytes(packet.body)
        return handler.Outcome_Reply(handler.Answer(packet.msg_id, body))

    def snapshot(self) -> bytes:
        return str(STATE["count"]).encode()

    def restore(self, state: bytes) -> None:
        STATE["count"] = int(state.decode() or "0")
