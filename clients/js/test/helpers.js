// Test helpers: start a live attnkit server on 127.0.0.1 and reference math in float64.
import { spawn } from 'node:child_process';
import net from 'node:net';

/** A free TCP port on 127.0.0.1. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** The command that starts the server: `$ATTNKIT_BIN serve ...` (ATTNKIT_BIN may hold arguments), default `attnkit`. */
export function serverCommand() {
  const bin = (process.env.ATTNKIT_BIN || 'attnkit').trim().split(/\s+/);
  return { cmd: bin[0], args: bin.slice(1) };
}

/**
 * Start `attnkit serve --host 127.0.0.1 --port <free>` with extra environment (limits go through
 * ATTNKIT_SERVER_* variables) and wait until /health answers. Resolves to {url, stop}.
 */
export async function startServer(env = {}) {
  const port = await freePort();
  const { cmd, args } = serverCommand();
  const child = spawn(cmd, [...args, 'serve', '--host', '127.0.0.1', '--port', String(port)], {
    env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stdout.on('data', (d) => { output += d; });
  child.stderr.on('data', (d) => { output += d; });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  child.on('error', (err) => { output += `\nspawn error: ${err.message}`; });
  const url = `http://127.0.0.1:${port}`;
  const deadline = Date.now() + 60000;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) throw new Error(`server exited early:\n${output}`);
    if (Date.now() > deadline) {
      child.kill('SIGKILL');
      throw new Error(`server did not start within 60 s:\n${output}`);
    }
    try {
      const r = await fetch(`${url}/health`);
      if (r.ok) break;
    } catch {
      // not up yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return {
    url,
    output: () => output,
    async stop() {
      if (child.exitCode === null && child.signalCode === null) child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), 20000);
      const result = await exited;
      clearTimeout(timer);
      return result;
    },
  };
}

/** A seeded float32 array of standard normals (mulberry32 + Box-Muller). */
export function randn(n, seed = 1) {
  let a = seed >>> 0;
  const uni = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.sqrt(-2 * Math.log(1 - uni())) * Math.cos(2 * Math.PI * uni());
  return out;
}

/**
 * float64 reference of the attention weights softmax(scale q k^T + mask) for flat (L, H, D) arrays, as a
 * flat (H, Lq, Lk) Float64Array; `mask(i, j)` returns true / false (bool) or a number to add. A fully
 * masked row gives zeros.
 */
export function refScores(Q, K, { heads, dim, mask = null, scale = 1 / Math.sqrt(dim) }) {
  const lq = Q.length / (heads * dim);
  const lk = K.length / (heads * dim);
  const out = new Float64Array(heads * lq * lk);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < lq; i++) {
      const s = new Float64Array(lk);
      for (let j = 0; j < lk; j++) {
        let acc = 0;
        for (let d = 0; d < dim; d++) acc += Q[(i * heads + h) * dim + d] * K[(j * heads + h) * dim + d];
        s[j] = acc * scale;
        if (mask) {
          const m = mask(i, j);
          if (m === false) s[j] = -Infinity;
          else if (typeof m === 'number') s[j] += m;
        }
      }
      const mx = Math.max(...s);
      if (mx === -Infinity) continue;
      let z = 0;
      const p = s.map((x) => { const e = Math.exp(x - mx); z += e; return e; });
      for (let j = 0; j < lk; j++) out[(h * lq + i) * lk + j] = p[j] / z;
    }
  }
  return out;
}

/**
 * float64 reference of softmax(scale q k^T + mask) v for flat (L, H, D) arrays (weights from
 * `refScores`); values are (Lk, H, dv).
 */
export function refAttention(Q, K, V, { heads, dim, dv = dim, mask = null, scale = 1 / Math.sqrt(dim) }) {
  const lq = Q.length / (heads * dim);
  const lk = K.length / (heads * dim);
  const p = refScores(Q, K, { heads, dim, mask, scale });
  const out = new Float64Array(lq * heads * dv);
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < lq; i++) {
      for (let j = 0; j < lk; j++) {
        const w = p[(h * lq + i) * lk + j];
        for (let d = 0; d < dv; d++) out[(i * heads + h) * dv + d] += w * V[(j * heads + h) * dv + d];
      }
    }
  }
  return out;
}

/** Largest |a - b| over two arrays of the same length. */
export function maxAbsDiff(a, b) {
  if (a.length !== b.length) throw new Error(`length ${a.length} != ${b.length}`);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i] - b[i]));
  return m;
}
