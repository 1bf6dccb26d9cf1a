// Node `ws` peer for wasmgate's benchmarks (docs/benchmarks.md): echoes every message back
// to its sender. PORT (default 7200) on 127.0.0.1; WORKERS processes through Node's cluster
// module (the primary accepts and hands connections round-robin), as a Node deployment
// above one process's ~19k open files would run.
'use strict';
const cluster = require('node:cluster');
const { WebSocketServer } = require('ws');

const port = Number(process.env.PORT || 7200);
const workers = Number(process.env.WORKERS || 1);

if (cluster.isPrimary) {
  for (let i = 0; i < workers; i++) cluster.fork();
  cluster.on('exit', (worker, code) => console.error(`worker ${worker.process.pid} exited ${code}`));
} else {
  const wss = new WebSocketServer({ host: '127.0.0.1', port, perMessageDeflate: false, clientTracking: false });
  wss.on('connection', (ws) => {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    ws.on('error', () => {});
  });
}
