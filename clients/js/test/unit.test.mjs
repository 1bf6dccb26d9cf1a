// Unit tests (node --test): the packet codec, and the error and close code tables against
// docs/protocol.md so the two cannot drift apart.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  CLOSE_CODES,
  ERROR_CODES,
  GatewayError,
  closeReasonOf,
  decodeBinary,
  decodeJson,
  encodeBinary,
  encodeJson,
} from "../dist/index.js";

const protocol = readFileSync(new URL("../../../docs/protocol.md", import.meta.url), "utf8");

/** The rows of the markdown table that follows `heading`, as arrays of trimmed cells. */
function table(heading) {
  const start = protocol.indexOf(heading);
  assert.ok(start >= 0, `${heading} in docs/protocol.md`);
  const lines = protocol.slice(start).split("\n");
  const first = lines.findIndex((l) => l.startsWith("|"));
  const rows = [];
  for (const line of lines.slice(first + 2)) {
    if (!line.startsWith("|")) break;
    rows.push(line.split("|").slice(1, -1).map((c) => c.trim()));
  }
  return rows;
}

test("binary packets: 8-byte big-endian header, then the body", () => {
  const frame = encodeBinary(100, 7, "hi");
  assert.deepEqual([...frame], [0, 0, 0, 100, 0, 0, 0, 7, 104, 105]);
  const packet = decodeBinary(frame.buffer);
  assert.equal(packet.msgId, 100);
  assert.equal(packet.seq, 7);
  assert.equal(packet.text(), "hi");
  assert.deepEqual(decodeBinary(encodeBinary(5, 1, { room: "r" })).json(), { room: "r" });
  assert.throws(() => decodeBinary(new Uint8Array(3)), RangeError);
  assert.equal(decodeBinary(encodeBinary(0xffffffff, 0xfffffffe, undefined)).msgId, 0xffffffff);
});

test("JSON packets: data as documented, data_b64 for bytes", () => {
  assert.equal(encodeJson(100, 3, { move: [1, 2] }), '{"id":100,"seq":3,"data":{"move":[1,2]}}');
  assert.equal(encodeJson(1, 1, "token"), '{"id":1,"seq":1,"data":"token"}');
  assert.equal(encodeJson(2, 0, undefined), '{"id":2,"seq":0}');
  assert.equal(decodeJson('{"id":4,"seq":1,"data":{"x":1}}').text(), '{"x":1}');
  assert.equal(decodeJson('{"id":5,"seq":0,"data":"plain text"}').text(), "plain text");
  assert.deepEqual([...decodeJson('{"id":6,"seq":0,"data_b64":"/wA="}').body], [255, 0]);
  assert.equal(decodeJson('{"id":7}').body.length, 0);
  assert.throws(() => decodeJson('{"seq":1}'), SyntaxError);
});

test("every error code of docs/protocol.md is known with its blame and retry, and no other", () => {
  const documented = new Map();
  for (const [codes, , , blame, retry] of table("### Error frames")) {
    if (!blame) continue; // "any close reason below"
    for (const [, code] of codes.matchAll(/`([a-z_]+)`/g)) documented.set(code, { blame, retryable: retry === "yes" });
  }
  // `forbidden` appears twice (router and auth refusals) with the same blame and retry.
  assert.deepEqual(Object.fromEntries(documented), ERROR_CODES);
  const error = new GatewayError("upstream_error", "dest 400: result -3", 9, -3);
  assert.equal(error.blame, "upstream");
  assert.equal(error.retryable, false);
  assert.equal(error.result, -3);
  assert.ok(error.isKnown());
  assert.equal(new GatewayError("node_restarting", "", 0).isKnown(), false);
});

test("every close code of docs/protocol.md is known, and no other", () => {
  const documented = Object.fromEntries(
    table("### Close codes").map(([code, name]) => [name.replaceAll("`", ""), Number(code)]),
  );
  assert.deepEqual(documented, CLOSE_CODES);
  assert.equal(closeReasonOf(4006), "replaced");
  assert.equal(closeReasonOf(1006), undefined);
});
