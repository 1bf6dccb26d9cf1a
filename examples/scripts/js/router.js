// wasmgate router template (JavaScript, componentize-js).
//
// Forwards each message id of `message_map` to its dest, answers message 150 itself
// (`router:js:<body>`), and rejects any other id with `unknown_message`. Config keys:
// `default_dest` (optional integer): where unmapped ids go instead.
//
// Types: types/router-script/ (generated from wit/world.wit by `npm run types`). WIT u32 is a
// Number, u64 a BigInt, list<u8> a Uint8Array; a variant is `{ tag, val }`; throwing from
// a function returning `result<_, string>` returns the error.

const REPLY_MSG_ID = 150;
const encoder = new TextEncoder();
let routes = new Map();
let defaultDest = undefined;

function concat(prefix, body) {
  const head = encoder.encode(prefix);
  const out = new Uint8Array(head.length + body.length);
  out.set(head, 0);
  out.set(body, head.length);
  return out;
}

export const router = {
  init(config, messageMap) {
    const settings = JSON.parse(config || '{}');
    defaultDest = settings.default_dest;
    routes = new Map(messageMap.map((route) => [route.msgId, route.destId]));
  },

  route(session, packet) {
    if (packet.msgId === REPLY_MSG_ID) {
      return { tag: 'reply', val: { msgId: packet.msgId, body: concat('router:js:', packet.body) } };
    }
    const dest = routes.has(packet.msgId) ? routes.get(packet.msgId) : defaultDest;
    if (dest === undefined) {
      return { tag: 'reject', val: { tag: 'unknown-message' } };
    }
    return { tag: 'forward', val: dest };
  },
};
