// Keep-alive HTTPS round trips from node (its own OpenSSL: SSL_write /
// SSL_read in the node executable). Commands on stdin, one JSON line each:
//   run N   a new keep-alive agent, 5 warm-up requests, then N timed GET / -> {"ns": ..., "n": N}
//
//   node bench/workers/https_client.js PORT
'use strict';
const https = require('https');
const readline = require('readline');

const port = Number(process.argv[2]);

function get(agent) {
  return new Promise((resolve, reject) => {
    const req = https.get({ host: '127.0.0.1', port, path: '/', agent, rejectUnauthorized: false }, (res) => {
      res.resume();
      res.on('end', resolve);
    });
    req.on('error', reject);
    req.setTimeout(30000, () => req.destroy(new Error('timeout')));
  });
}

async function run(n) {
  const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
  for (let i = 0; i < 5; i++) await get(agent);
  const t = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await get(agent);
  const ns = Number(process.hrtime.bigint() - t);
  agent.destroy();
  return { ns, n };
}

console.log(JSON.stringify({ pid: process.pid }));
const rl = readline.createInterface({ input: process.stdin });
let queue = Promise.resolve();
rl.on('line', (line) => {
  const parts = line.trim().split(/\s+/);
  if (parts[0] !== 'run') { rl.close(); return; }
  queue = queue.then(() => run(Number(parts[1]))).then(
    (r) => console.log(JSON.stringify(r)),
    (e) => console.log(JSON.stringify({ error: String(e) })));
});
rl.on('close', () => queue.then(() => process.exit(0)));
