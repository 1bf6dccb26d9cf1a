// wasmgate handler template (JavaScript, componentize-js): a stateful counter.
//
// Answers each packet with `js:<count>:<body>`, where count is how many packets this handler
// has handled, across swaps: `snapshot` gives the count as decimal ASCII and `restore` reads
// it back, the same format as the other languages' templates, so the state survives a swap
// from one language to another. Mark it `stateful = true` in the manifest.

const encoder = new TextEncoder();
const decoder = new TextDecoder();
let count = 0;

export const handler = {
  init(_config) {},

  handle(_session, packet) {
    count += 1;
    const head = encoder.encode(`js:${count}:`);
    const body = new Uint8Array(head.length + packet.body.length);
    body.set(head, 0);
    body.set(packet.body, head.length);
    return { tag: 'reply', val: { msgId: packet.msgId, body } };
  },

  snapshot() {
    return encoder.encode(String(count));
  },

  restore(state) {
    count = state.length === 0 ? 0 : Number(decoder.decode(state));
  },
};
