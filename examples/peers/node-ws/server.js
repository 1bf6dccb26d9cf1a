// Node `ws` peer for wasmgate's benchmarks (docs/benchmarks.md). PORT (default 7200) on
// 127.0.0.1; WORKERS processes through Node's cluster module (the primary accepts and hands
// connections round-robin), as a Node deployment above one process's ~19k open files would
// run. MODE `echo` (default) sends every message back to its sender; MODE `broadcast` sends
// every message to every connection of the process (the room of the fan-out comparison: run
// it with one worker), the way the ws README broadcasts.
'use strict';
const cluster = require('node:cluster');
const { WebSocketServer, WebSocket } = require('ws');

const port = Number(process.env.PORT || 7200);
const workers = Number(process.env.WORKERS || 1);
const broadcast = process.env.MODE === 'broadcast';

if (cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on('exit', (worker, code) => console.error(`worker ${worker.process.pid} exited ${code}`));
} else {
  const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false, clientTracking: broadcast });
  wss.on('connection', (ws) => {
    ws.on('error', () => {});
    if (broadcast) {
      ws.on('message', (data, isBinary) => {
        for (const client of wss.clients) {
          if (client.readyState === WebSocket.OPEN) client.send(data, { binary: isBinary });
        }
      });
    } else {
      ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    }
  });
}
