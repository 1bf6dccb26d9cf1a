// wasmgate handler template (JavaScript, componentize-js): a stateful counter.
//
// Answers each packet with `js:<count>:<body>` (`qjs:...` in the QuickJS build), where count
// is how many packets this handler has handled, across swaps: `snapshot` gives the count as
// decimal ASCII and `restore` reads it back, the same format as the other languages'
// templates, so the state survives a swap from one language to another. Mark it
// `stateful = true` in the manifest.

// Which build answers: StarlingMonkey defines TextEncoder, QuickJS does not. Bytes are
// converted by hand (ASCII) so the same file builds with both backends.
const ENGINE = typeof TextEncoder === 'undefined' ? 'qjs' : 'js';
let count = 0;

function ascii(text) {
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

export const handler = {
  init(_config) {},

  handle(_session, packet) {
    count += 1;
    const head = ascii(`${ENGINE}:${count}:`);
    const body = new Uint8Array(head.length + packet.body.length);
    body.set(head, 0);
    body.set(packet.body, head.length);
    return { tag: 'reply', val: { msgId: packet.msgId, body } };
  },

  snapshot() {
    return ascii(String(count));
  },

  restore(state) {
    count = state.length === 0 ? 0 : Number(String.fromCharCode(...state));
  },
};
