// Opens N idle connections that never send a byte, then checks that the
// server still answers /health promptly and generates, and that the idle
// sockets cost it no threads.
// usage: node serve_idle.mjs PORT SERVER_PID N
import net from 'node:net';
import http from 'node:http';
import fs from 'node:fs';

const [port, pid, n] = process.argv.slice(2).map(Number);
const threads = () => Number(/Threads:\s+(\d+)/.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'))[1]);
const get = (path, body) => new Promise((resolve, reject) => {
  const t0 = process.hrtime.bigint();
  const req = http.request({ host: '127.0.0.1', port, path, method: body ? 'POST' : 'GET', agent: false,
                             headers: body ? { 'Content-Type': 'application/json' } : {} }, (res) => {
    let data = '';
    res.on('data', (d) => { data += d; });
    res.on('end', () => resolve({ status: res.statusCode, data, ms: Number(process.hrtime.bigint() - t0) / 1e6 }));
  });
  req.on('error', reject);
  req.setTimeout(30000, () => req.destroy(new Error('timeout')));
  if (body) req.write(body);
  req.end();
});

const before = threads();
const socks = [];
await Promise.all(Array.from({ length: n }, () => new Promise((resolve, reject) => {
  const s = net.connect({ host: '127.0.0.1', port }, () => resolve());
  s.on('error', reject);
  socks.push(s);
})));
// Let the server accept them all before measuring.
await new Promise((r) => setTimeout(r, 500));
const during = threads();
const times = [];
for (let i = 0; i < 5; i++) {
  const r = await get('/health');
  if (r.status !== 200) { console.log(`FAIL: /health ${r.status} with ${n} idle connections`); process.exit(1); }
  times.push(r.ms);
}
const gen = await get('/v1/completions', JSON.stringify({ prompt: 'Once upon a time', max_tokens: 8, temperature: 0 }));
const alive = socks.filter((s) => !s.destroyed).length;
for (const s of socks) s.destroy();
const best = Math.min(...times);
console.log(`idle=${n} open=${alive} threads before=${before} during=${during} health ms=${times.map((t) => t.toFixed(1)).join(',')} gen=${gen.status}`);
let ok = true;
if (alive !== n) { console.log(`FAIL: the server closed ${n - alive} idle connections early`); ok = false; }
if (best >= 100) { console.log(`FAIL: /health took ${best.toFixed(1)} ms at best`); ok = false; }
if (during > before + 8) { console.log(`FAIL: threads grew from ${before} to ${during} with idle connections`); ok = false; }
if (gen.status !== 200 || !JSON.parse(gen.data).choices) { console.log(`FAIL: completion ${gen.status}`); ok = false; }
process.exit(ok ? 0 : 1);
