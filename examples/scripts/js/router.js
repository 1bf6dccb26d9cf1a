// wasmgate router template (JavaScript, componentize-js).
//
// Forwards each message id of `message_map` to its dest, answers message 150 itself
// (`router:js:<body>`; `router:qjs:<body>` in the QuickJS build), and rejects any other id with `unknown_message`. Config keys:
// `default_dest` (optional integer): where unmapped ids go instead.
//
// Types: types/router-script/ (generated from wit/world.wit by `npm run types`). WIT u32 is a
// Number, u64 a BigInt, list<u8> a Uint8Array; a variant is `{ tag, val }`; throwing from
// a function returning `result<_, string>` returns the error.

const REPLY_MSG_ID = 150;
// Which build answers: StarlingMonkey defines TextEncoder, QuickJS does not.
const ENGINE = typeof TextEncoder === 'undefined' ? 'qjs' : 'js';
let routes = new Map();
let defaultDest = undefined;

// `prefix` (ASCII) then `body`. Written without TextEncoder, which QuickJS lacks, so the same
// file builds with both backends.
function concat(prefix, body) {
  const out = new Uint8Array(prefix.length + body.length);
  for (let i = 0; i < prefix.length; i++) out[i] = prefix.charCodeAt(i);
  out.set(body, prefix.length);
  return out;
}

export const router = {
  init(config, messageMap) {
    const settings = JSON.parse(config || '{}');
    const dest = settings.default_dest;
    if (dest !== undefined && !(Number.isInteger(dest) && dest >= 0 && dest < 2 ** 32)) {
      throw 'config: default_dest must be a dest id (an integer)';
    }
    defaultDest = dest;
    routes = new Map(messageMap.map((route) => [route.msgId, route.destId]));
  },

  route(session, packet) {
    if (packet.msgId === REPLY_MSG_ID) {
      return { tag: 'reply', val: { msgId: packet.msgId, body: concat(`router:${ENGINE}:`, packet.body) } };
    }
    const dest = routes.has(packet.msgId) ? routes.get(packet.msgId) : defaultDest;
    if (dest === undefined) {
      return { tag: 'reject', val: { tag: 'unknown-message' } };
    }
    return { tag: 'forward', val: dest };
  },
};
