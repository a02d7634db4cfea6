// The JS client against a live `attnkit serve` on 127.0.0.1, checked against float64 references.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { after, before, describe, test } from 'node:test';

import {
  AttnkitClient, AttnkitError, createBoolMask, createMask, CrossAttention, DEFAULT_BASE_URL, FlashAttention, MECHANISM_CLASSES,
} from '../src/index.js';
import { maxAbsDiff, randn, refAttention, refScores, startServer } from './helpers.js';

const KEY = 'js-test-key';
let server;
let client;
let names;

before(async () => {
  server = await startServer({ ATTNKIT_SERVER_API_KEY: KEY, ATTNKIT_SERVER_MAX_CONCURRENCY: '2', ATTNKIT_SERVER_MAX_ELEMENTS: '200000' });
  client = new AttnkitClient({ baseUrl: server.url, apiKey: KEY });
  names = (await client.mechanisms()).map((m) => m.name);
});

after(async () => {
  if (server) {
    const { code, signal } = await server.stop();
    assert.ok(code === 0 || signal === 'SIGTERM', `server stopped with code ${code}, signal ${signal}:\n${server.output()}`);
  }
});

describe('server basics', () => {
  test('health and mechanisms', async () => {
    const h = await client.health();
    assert.equal(h.status, 'ok');
    assert.match(h.version, /^\d+\.\d+/);
    const flash = (await client.mechanisms()).find((m) => m.name === 'flash');
    const heads = flash.options.find((o) => o.name === 'heads');
    const { name, type, default: dflt, required, aliases } = heads;
    assert.deepEqual({ name, type, default: dflt, required }, { name: 'heads', type: 'int', default: 8, required: false });
    assert.ok(Array.isArray(aliases) && aliases.includes('num_heads'));  // the registry's option table
  });

  test('a missing API key is a 401 AttnkitError', async () => {
    const anon = new AttnkitClient({ baseUrl: server.url });
    await assert.rejects(anon.mechanisms(), (err) => err instanceof AttnkitError && err.status === 401 && err.code === 'unauthorized');
  });

  test('an unreachable server is a network_error', async () => {
    const nowhere = new AttnkitClient({ baseUrl: 'http://127.0.0.1:9', timeoutMs: 5000 });
    await assert.rejects(nowhere.health(), (err) => err instanceof AttnkitError && ['network_error', 'timeout'].includes(err.code));
  });
});

describe('FlashAttention', () => {
  const heads = 2;
  const dim = 8;
  const L = 7;
  const S = 11;
  const Q = randn(L * heads * dim, 1);
  const K = randn(S * heads * dim, 2);
  const V = randn(S * heads * dim, 3);

  test('binary forward matches the float64 reference', async () => {
    const attn = new client.FlashAttention({ heads, dim, blockSize: 4 });
    const out = await attn.forward(Q, K, V);
    assert.ok(out instanceof Float32Array);
    assert.equal(out.length, L * heads * dim);
    assert.ok(maxAbsDiff(out, refAttention(Q, K, V, { heads, dim })) < 1e-5);
  });

  test('json transport gives bit-identical results', async () => {
    const jsonClient = new AttnkitClient({ baseUrl: server.url, apiKey: KEY, transport: 'json' });
    const a = await new client.FlashAttention({ heads, dim }).forward(Q, K, V);
    const b = await new FlashAttention({ heads, dim }, jsonClient).forward(Q, K, V);
    assert.deepEqual(Array.from(a), Array.from(b));
  });

  test('causal option and createMask agree with the reference', async () => {
    const Qs = Q;
    const Ks = randn(L * heads * dim, 4);
    const Vs = randn(L * heads * dim, 5);
    const ref = refAttention(Qs, Ks, Vs, { heads, dim, mask: (i, j) => j <= i });
    const viaOption = await new client.FlashAttention({ heads, dim, causal: true }).forward(Qs, Ks, Vs);
    const viaMask = await new client.FlashAttention({ heads, dim }).forward(Qs, Ks, Vs, createMask('causal', L));
    const viaBool = await new client.FlashAttention({ heads, dim }).forward(Qs, Ks, Vs, createBoolMask('causal', L));
    for (const out of [viaOption, viaMask, viaBool]) assert.ok(maxAbsDiff(out, ref) < 1e-5);
  });

  test('a padding mask hides keys, and a fully masked row is zeros', async () => {
    const Ks = randn(L * heads * dim, 6);
    const Vs = randn(L * heads * dim, 7);
    const out = await new client.FlashAttention({ heads, dim }).forward(Q, Ks, Vs, createMask('padding', L, [1, 4]));
    assert.ok(maxAbsDiff(out, refAttention(Q, Ks, Vs, { heads, dim, mask: (i, j) => j !== 1 && j !== 4 })) < 1e-5);
    const all = new Float32Array(L * L).fill(-Infinity);
    all.fill(0, 0, L); // only row 0 may attend
    const zeros = await new client.FlashAttention({ heads, dim }).forward(Q, Ks, Vs, all);
    assert.ok(zeros.subarray(heads * dim).every((x) => x === 0));
  });

  test('server errors arrive as AttnkitError with code, field and status', async () => {
    const wrong = new client.FlashAttention({ heads: 3, dim });
    await assert.rejects(wrong.forward(Q, K, V), (err) => {
      assert.ok(err instanceof AttnkitError && err instanceof Error);
      assert.equal(err.status, 422);
      assert.equal(err.code, 'shape_error');
      assert.equal(err.field, 'query');
      assert.match(err.message, /heads/);
      return true;
    });
    const bad = Q.slice();
    bad[3] = NaN;
    await assert.rejects(new client.FlashAttention({ heads, dim }).forward(bad, K, V), { code: 'non_finite', field: 'query' });
    await assert.rejects(new client.FlashAttention({ heads, dim, dropout: 2 }).forward(Q, K, V), { code: 'config_error', field: 'options.dropout' });
    await assert.rejects(client.attention('no_such_thing', { query: Q }), { code: 'unknown_mechanism', status: 404 });
  });

  test('dispose makes later calls reject', async () => {
    const attn = new client.FlashAttention({ heads, dim });
    attn.dispose();
    await assert.rejects(attn.forward(Q, K, V), { code: 'disposed' });
  });

  test('benchmark measures round trips', async () => {
    const r = await new client.FlashAttention({ heads, dim }).benchmark(16, 3);
    assert.ok(r.latencyMs > 0 && Number.isFinite(r.opsPerSecond));
  });
});

describe('model-level and other mechanisms', () => {
  function permuteRows(x, width, perm) {
    const out = new Float32Array(x.length);
    perm.forEach((src, dst) => out.set(x.subarray(src * width, (src + 1) * width), dst * width));
    return out;
  }

  test('MultiHeadAttention: self-attention is permutation equivariant and transports agree', async () => {
    const modelDim = 8;
    const L = 5;
    const X = randn(L * modelDim, 11);
    const mha = new client.MultiHeadAttention({ modelDim, heads: 2, seed: 7 });
    const out = await mha.forward(X);
    assert.equal(out.length, L * modelDim);
    const perm = [3, 0, 4, 1, 2];
    const outPerm = await mha.forward(permuteRows(X, modelDim, perm));
    assert.ok(maxAbsDiff(outPerm, permuteRows(out, modelDim, perm)) < 1e-5);
    const jsonClient = new AttnkitClient({ baseUrl: server.url, apiKey: KEY, transport: 'json' });
    const again = await new jsonClient.MultiHeadAttention({ modelDim, heads: 2, seed: 7 }).forward(X);
    assert.deepEqual(Array.from(again), Array.from(out));
  });

  test('CrossAttention: permuting key/value pairs leaves the output unchanged', async () => {
    const queryDim = 6;
    const keyDim = 4;
    const Qx = randn(3 * queryDim, 12);
    const Kx = randn(5 * keyDim, 13);
    const cross = new CrossAttention({ queryDim, keyDim, heads: 2, seed: 1 }, client);
    const out = await cross.forward(Qx, Kx, Kx);
    assert.equal(out.length, 3 * queryDim);
    const perm = [4, 2, 0, 3, 1];
    const Kp = permuteRows(Kx, keyDim, perm);
    assert.ok(maxAbsDiff(await cross.forward(Qx, Kp, Kp), out) < 1e-5);
  });

  test('HyperbolicAttention: key permutation invariance, output inside the ball', async (t) => {
    if (!names.includes('hyperbolic')) return t.skip('hyperbolic is not registered on this server');
    const dim = 4;
    const small = (n, s) => randn(n, s).map((x) => x * 0.2);
    const Qh = small(3 * dim, 21);
    const Kh = small(6 * dim, 22);
    const Vh = small(6 * dim, 23);
    const hyp = new client.HyperbolicAttention({ dim, curvature: 1 });
    const out = await hyp.forward(Qh, Kh, Vh);
    assert.equal(out.length, 3 * dim);
    for (let i = 0; i < 3; i++) {
      let norm = 0;
      for (let d = 0; d < dim; d++) norm += out[i * dim + d] ** 2;
      assert.ok(Math.sqrt(norm) < 1);
    }
    const perm = [5, 3, 1, 0, 2, 4];
    const out2 = await hyp.forward(Qh, permuteRows(Kh, dim, perm), permuteRows(Vh, dim, perm));
    assert.ok(maxAbsDiff(out2, out) < 1e-5);
  });

  test('LinearAttention (elu feature map) matches the float64 reference', async (t) => {
    if (!names.includes('linear')) return t.skip('linear is not registered on this server');
    const heads = 2;
    const dim = 4;
    const L = 6;
    const Q = randn(L * heads * dim, 31);
    const K = randn(L * heads * dim, 32);
    const V = randn(L * heads * dim, 33);
    const eps = 1e-6;
    const phi = (x) => (x > 0 ? x + 1 : Math.exp(x));
    const ref = new Float64Array(L * heads * dim);
    for (let h = 0; h < heads; h++) {
      for (let i = 0; i < L; i++) {
        let z = 0;
        const num = new Float64Array(dim);
        for (let j = 0; j < L; j++) {
          let w = 0;
          for (let d = 0; d < dim; d++) w += phi(Q[(i * heads + h) * dim + d]) * phi(K[(j * heads + h) * dim + d]);
          z += w;
          for (let d = 0; d < dim; d++) num[d] += w * V[(j * heads + h) * dim + d];
        }
        for (let d = 0; d < dim; d++) ref[(i * heads + h) * dim + d] = num[d] / (z + eps);
      }
    }
    const out = await new client.LinearAttention({ dim, heads, featureMap: 'elu', eps }).forward(Q, K, V);
    assert.ok(maxAbsDiff(out, ref) < 1e-4);
  });

  test('ScaledDotProduct: one query over its neighbours', async () => {
    const d = 8;
    const k = 10;
    const q = randn(d, 41);
    const keys = randn(k * d, 42);
    const vals = randn(k * 3, 43);
    const out = await new client.ScaledDotProduct({ dim: d }).forward(q, keys, vals);
    const s = Array.from({ length: k }, (_, j) => {
      let acc = 0;
      for (let i = 0; i < d; i++) acc += q[i] * keys[j * d + i];
      return acc / Math.sqrt(d);
    });
    const mx = Math.max(...s);
    const p = s.map((x) => Math.exp(x - mx));
    const z = p.reduce((a, b) => a + b, 0);
    const ref = [0, 1, 2].map((c) => p.reduce((acc, pj, j) => acc + (pj / z) * vals[j * 3 + c], 0));
    assert.ok(maxAbsDiff(out, ref) < 1e-5);
  });

  test('camelCase options and aliases reach the server (globalTokens, numHeads, windowSize) on classes and raw calls', async () => {
    const L = 6;
    const Q = randn(L * 2 * 4, 61);
    // a window wider than the sequence sees every key: plain softmax attention
    const wide = new client.LocalGlobalAttention({ dim: 4, numHeads: 2, windowSize: 16, globalTokens: 1 });
    assert.ok(maxAbsDiff(await wide.forward(Q, Q, Q), refAttention(Q, Q, Q, { heads: 2, dim: 4 })) < 1e-5);
    // a narrow window: the global token changes the result, so the option arrived under its camelCase name
    const shaped = { query: { data: Q, shape: [L, 2, 4] } };
    const g0 = await client.attention('local_global', shaped, { dim: 4, heads: 2, window: 1, globalTokens: 0 });
    const g1 = await client.attention('local_global', shaped, { dim: 4, heads: 2, window: 1, globalTokens: 1 });
    const g1snake = await client.attention('local_global', shaped, { dim: 4, heads: 2, window: 1, global_tokens: 1 });
    assert.ok(maxAbsDiff(g0.data, g1.data) > 1e-3);
    assert.deepEqual(g1.data, g1snake.data);
    const w = await client.scores('local_global', shaped, { dim: 4, numHeads: 2, window: 1, globalTokens: 1 }, { transport: 'json' });
    assert.deepEqual(w.shape, [2, L, L]);
  });

  test('all 13 mechanisms have classes, bound to the client, named like the server\'s mechanisms', () => {
    assert.equal(Object.keys(MECHANISM_CLASSES).length, 13);
    assert.deepEqual(Object.keys(MECHANISM_CLASSES).sort(), [...names].sort());
    for (const [name, cls] of Object.entries(MECHANISM_CLASSES)) {
      const m = new client[cls.name]({ dim: 4 });
      assert.ok(m instanceof cls);
      assert.equal(m.mechanism, name);
      assert.equal(m.client, client);
    }
  });

  test('the default base URL is attnkit serve\'s default port', () => {
    const port = execFileSync(process.env.ATTNKIT_PYTHON || 'python3',
      ['-c', 'from attnkit.cli.config import SCHEMA; print(SCHEMA["server"]["port"].default)']).toString().trim();
    assert.equal(new AttnkitClient().baseUrl, `http://127.0.0.1:${port}`);
    assert.equal(DEFAULT_BASE_URL, `http://127.0.0.1:${port}`);
  });

  test('batch: results in order with per-item errors', async () => {
    const Q = randn(4 * 2 * 4, 51);
    const res = await client.batch([
      { mechanism: 'flash', query: { data: Q, shape: [4, 2, 4] }, options: { heads: 2, dim: 4 } },
      { mechanism: 'flash', query: { data: Q, shape: [4, 2, 4] }, options: { heads: 4, dim: 4 } },
      { mechanism: 'flash', query: { data: Q, shape: [4, 2, 4] }, options: { heads: 2, dim: 4, blockSize: 2, causal: true } },
    ]);
    assert.ok(maxAbsDiff(res[0].data, refAttention(Q, Q, Q, { heads: 2, dim: 4 })) < 1e-5);
    assert.ok(res[1] instanceof AttnkitError && res[1].code === 'shape_error' && res[1].field === 'requests[1].query');
    assert.ok(maxAbsDiff(res[2].data, refAttention(Q, Q, Q, { heads: 2, dim: 4, mask: (i, j) => j <= i })) < 1e-5);
  });
});

describe('attentionScores', () => {
  const heads = 2;
  const dim = 8;
  const L = 7;
  const S = 11;
  const Q = randn(L * heads * dim, 61);
  const K = randn(S * heads * dim, 62);

  function rowSums(w, lk) {
    const out = [];
    for (let r = 0; r < w.length / lk; r++) out.push(w.subarray(r * lk, (r + 1) * lk).reduce((a, b) => a + b, 0));
    return out;
  }

  // The library's own weights for the same float32 inputs, computed directly in Python (no server).
  const python = process.env.ATTNKIT_PYTHON || 'python3';
  const hasLibrary = spawnSync(python, ['-c', 'import attnkit'], { encoding: 'utf8' }).status === 0;
  function libraryWeights(mechanism, options, tensors) {
    const script = [
      'import json, sys',
      'import numpy as np',
      'from attnkit.mechanisms import registry',
      'd = json.load(sys.stdin)',
      'm = registry.create(d["mechanism"], **d["options"])',
      'a = {k: np.asarray(t["data"], dtype=np.float32).reshape(t["shape"]) for k, t in d["tensors"].items()}',
      'w = m.attention_weights(a["query"], a.get("keys"))',
      'print(json.dumps(np.asarray(w, dtype=np.float64).ravel().tolist()))',
    ].join('\n');
    const input = JSON.stringify({
      mechanism, options, tensors: Object.fromEntries(Object.entries(tensors).map(([k, t]) => [k, { data: Array.from(t.data), shape: t.shape }])),
    });
    const r = spawnSync(python, ['-c', script], { input, encoding: 'utf8', timeout: 120000 });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout);
  }

  test('FlashAttention: binary weights match the float64 reference, rows sum to 1', async () => {
    const flash = new client.FlashAttention({ heads, dim });
    const w = await flash.attentionScores(Q, K);
    assert.ok(w instanceof Float32Array);
    assert.equal(w.length, heads * L * S); // the spec's heads * seqLen * seqLen
    assert.ok(maxAbsDiff(w, refScores(Q, K, { heads, dim })) < 1e-6);
    for (const s of rowSums(w, S)) assert.ok(Math.abs(s - 1) < 1e-5);
    const { shape } = await flash.attentionScoresWithShape(Q, K);
    assert.deepEqual(shape, [heads, L, S]);
  });

  test('FlashAttention: keys default to the query; json transport is bit-identical', async () => {
    const self = await new client.FlashAttention({ heads, dim }).attentionScores(Q);
    assert.ok(maxAbsDiff(self, refScores(Q, Q, { heads, dim })) < 1e-6);
    const jsonClient = new AttnkitClient({ baseUrl: server.url, apiKey: KEY, transport: 'json' });
    const viaJson = await new jsonClient.FlashAttention({ heads, dim }).attentionScores(Q, K);
    const viaBinary = await new client.FlashAttention({ heads, dim }).attentionScores(Q, K);
    assert.deepEqual(Array.from(viaJson), Array.from(viaBinary));
  });

  test('FlashAttention: causal option, additive and bool masks agree with the reference; a fully masked row is zeros', async () => {
    const Ks = randn(L * heads * dim, 63);
    const ref = refScores(Q, Ks, { heads, dim, mask: (i, j) => j <= i });
    const viaOption = await new client.FlashAttention({ heads, dim, causal: true }).attentionScores(Q, Ks);
    const viaMask = await new client.FlashAttention({ heads, dim }).attentionScores(Q, Ks, createMask('causal', L));
    const viaBool = await new client.FlashAttention({ heads, dim }).attentionScores(Q, Ks, createBoolMask('causal', L));
    for (const w of [viaOption, viaMask, viaBool]) assert.ok(maxAbsDiff(w, ref) < 1e-6);
    const all = new Float32Array(L * L).fill(-Infinity);
    all.fill(0, 0, L); // only row 0 may attend
    const w = await new client.FlashAttention({ heads, dim }).attentionScores(Q, Ks, all);
    for (let h = 0; h < heads; h++) {
      assert.ok(Math.abs(w.subarray(h * L * L, h * L * L + L).reduce((a, b) => a + b, 0) - 1) < 1e-5);
      assert.ok(w.subarray(h * L * L + L, (h + 1) * L * L).every((x) => x === 0));
    }
  });

  test('MultiHeadAttention and SelfAttention: the library\'s weights, rows sum to 1, permutation equivariant', async (t) => {
    if (!hasLibrary) return t.skip(`${python} cannot import attnkit (set ATTNKIT_PYTHON)`);
    const modelDim = 8;
    const n = 5;
    const X = randn(n * modelDim, 64);
    const mha = new client.MultiHeadAttention({ modelDim, heads: 2, seed: 7 });
    const w = await mha.attentionScores(X);
    assert.equal(w.length, 2 * n * n);
    const lib = libraryWeights('multi_head', { model_dim: modelDim, heads: 2, seed: 7 }, { query: { data: X, shape: [n, modelDim] } });
    assert.ok(maxAbsDiff(w, lib) < 1e-6);
    for (const s of rowSums(w, n)) assert.ok(Math.abs(s - 1) < 1e-5);
    const self = await new client.SelfAttention({ modelDim, heads: 2, seed: 7 }).attentionScores(X);
    assert.ok(maxAbsDiff(self, w) < 1e-6);
    const perm = [3, 0, 4, 1, 2];
    const Xp = new Float32Array(X.length);
    perm.forEach((src, dst) => Xp.set(X.subarray(src * modelDim, (src + 1) * modelDim), dst * modelDim));
    const wp = await mha.attentionScores(Xp);
    for (let h = 0; h < 2; h++) {
      for (let i = 0; i < n; i++) {
        for (let j = 0; j < n; j++) assert.ok(Math.abs(wp[(h * n + i) * n + j] - w[(h * n + perm[i]) * n + perm[j]]) < 1e-5);
      }
    }
  });

  test('CrossAttention: the library\'s weights for queries and keys of different widths', async (t) => {
    if (!hasLibrary) return t.skip(`${python} cannot import attnkit (set ATTNKIT_PYTHON)`);
    const Qx = randn(3 * 6, 65);
    const Kx = randn(5 * 4, 66);
    const w = await new client.CrossAttention({ queryDim: 6, keyDim: 4, heads: 2, seed: 1 }).attentionScores(Qx, Kx);
    assert.equal(w.length, 2 * 3 * 5);
    const lib = libraryWeights('cross', { query_dim: 6, key_dim: 4, heads: 2, seed: 1 },
      { query: { data: Qx, shape: [3, 6] }, keys: { data: Kx, shape: [5, 4] } });
    assert.ok(maxAbsDiff(w, lib) < 1e-6);
  });

  /** The library's forward (or weights) for the same float32 tensors and keyword extras, computed in Python. */
  function libraryCall(mechanism, options, tensors, extras, what = 'forward') {
    const script = [
      'import json, sys',
      'import numpy as np',
      'from attnkit.mechanisms import registry',
      'd = json.load(sys.stdin)',
      'm = registry.create(d["mechanism"], **d["options"])',
      'arr = lambda t: np.asarray(t["data"], dtype=np.float32).reshape(t["shape"])',
      'a = {k: arr(t) for k, t in d["tensors"].items()}',
      'x = {k: arr(t) for k, t in d["extras"].items()}',
      'f = m.forward if d["what"] == "forward" else m.attention_weights',
      'print(json.dumps(np.asarray(f(a["query"], a.get("keys"), **x), dtype=np.float64).ravel().tolist()))',
    ].join('\n');
    const plain = (o) => Object.fromEntries(Object.entries(o).map(([k, t]) => [k, { data: Array.from(t.data), shape: t.shape }]));
    const input = JSON.stringify({ mechanism, options, tensors: plain(tensors), extras: plain(extras), what });
    const r = spawnSync(python, ['-c', script], { input, encoding: 'utf8', timeout: 120000 });
    assert.equal(r.status, 0, r.stderr);
    return JSON.parse(r.stdout);
  }

  test('EdgeFeaturedAttention: edgeFeatures reach the server over binary, JSON and batch; the library\'s numbers', async (t) => {
    if (!hasLibrary) return t.skip(`${python} cannot import attnkit (set ATTNKIT_PYTHON)`);
    // three targets, each over its own five neighbours with 2-wide edge features
    const q = { data: randn(3 * 4, 71), shape: [3, 4] };
    const k = { data: randn(3 * 5 * 4, 72), shape: [3, 5, 4] };
    const ef = { data: randn(3 * 5 * 2, 73), shape: [3, 5, 2] };
    const options = { dim: 4, heads: 2, edgeDim: 2, seed: 3 };
    const snake = { dim: 4, heads: 2, edge_dim: 2, seed: 3 };
    const want = libraryCall('edge_featured', snake, { query: q, keys: k }, { edge_features: ef });
    const wantW = libraryCall('edge_featured', snake, { query: q, keys: k }, { edge_features: ef }, 'weights');
    const gat = new client.EdgeFeaturedAttention(options);
    const viaBinary = await gat.forwardWithShape(q, k, null, null, { edgeFeatures: ef.data }); // flat: shaped from the keys
    assert.deepEqual(viaBinary.shape, [3, 4]);
    assert.ok(maxAbsDiff(viaBinary.data, want) < 1e-5);
    const jsonClient = new AttnkitClient({ baseUrl: server.url, apiKey: KEY, transport: 'json' });
    const viaJson = await new jsonClient.EdgeFeaturedAttention(options).forward(q, k, null, null, { edgeFeatures: ef });
    assert.deepEqual(Array.from(viaJson), Array.from(viaBinary.data));
    const w = await gat.attentionScoresWithShape(q, k, null, { edgeFeatures: ef });
    assert.ok(maxAbsDiff(w.data, wantW) < 1e-6);
    const [viaBatch] = await client.batch([{ mechanism: 'edge_featured', query: q, keys: k, edgeFeatures: ef, options }]);
    assert.deepEqual(Array.from(viaBatch.data), Array.from(viaBinary.data));
    // the features are read: other features, another output; none at all is refused naming the field
    const moved = await gat.forward(q, k, null, null, { edgeFeatures: { data: ef.data.map((x) => x + 1), shape: ef.shape } });
    assert.ok(maxAbsDiff(moved, want) > 1e-3);
    await assert.rejects(gat.forward(q, k), (e) => e instanceof AttnkitError && e.status === 422 && /edge_features/.test(`${e.field} ${e.message}`));
  });

  test('HyperbolicAttention: softmax of negative Poincaré distances (float64 reference)', async () => {
    const d = 4;
    const c = 1;
    const small = (n, seed) => randn(n, seed).map((x) => x * 0.2);
    const Qh = small(3 * d, 67);
    const Kh = small(6 * d, 68);
    const w = await new client.HyperbolicAttention({ dim: d, curvature: c }).attentionScores(Qh, Kh);
    assert.equal(w.length, 3 * 6);
    const norm2 = (x, i) => { let s = 0; for (let e = 0; e < d; e++) s += x[i * d + e] ** 2; return s; };
    for (let i = 0; i < 3; i++) {
      const logits = Array.from({ length: 6 }, (_, j) => {
        let diff = 0;
        for (let e = 0; e < d; e++) diff += (Qh[i * d + e] - Kh[j * d + e]) ** 2;
        return -Math.acosh(1 + (2 * c * diff) / ((1 - c * norm2(Qh, i)) * (1 - c * norm2(Kh, j)))) / Math.sqrt(c);
      });
      const mx = Math.max(...logits);
      const p = logits.map((x) => Math.exp(x - mx));
      const z = p.reduce((a, b) => a + b, 0);
      assert.ok(maxAbsDiff(w.subarray(i * 6, (i + 1) * 6), p.map((x) => x / z)) < 1e-5);
    }
  });

  test('ScaledDotProduct: one query\'s weights over its neighbours', async () => {
    const d = 8;
    const k = 10;
    const q = randn(d, 69);
    const keys = randn(k * d, 70);
    const w = await new client.ScaledDotProduct({ dim: d }).attentionScores(q, keys);
    const s = Array.from({ length: k }, (_, j) => {
      let acc = 0;
      for (let i = 0; i < d; i++) acc += q[i] * keys[j * d + i];
      return acc / Math.sqrt(d);
    });
    const mx = Math.max(...s);
    const p = s.map((x) => Math.exp(x - mx));
    const z = p.reduce((a, b) => a + b, 0);
    assert.equal(w.length, k);
    assert.ok(maxAbsDiff(w, p.map((x) => x / z)) < 1e-6);
    const masked = await new client.ScaledDotProduct({ dim: d }).attentionScores(q, keys, Uint8Array.from({ length: k }, (_, j) => (j % 2)));
    assert.ok(masked.every((x, j) => (j % 2 ? x > 0 : x === 0)));
  });

  test('errors: no weights (linear) is 422 no_weights, too many weights is 413, disposed rejects', async () => {
    const info = Object.fromEntries((await client.mechanisms()).map((m) => [m.name, m.has_scores]));
    assert.equal(info.flash, true);
    if (names.includes('linear')) {
      assert.equal(info.linear, false);
      await assert.rejects(new client.LinearAttention({ dim: 4, heads: 2 }).attentionScores(randn(16, 71)),
        (err) => err instanceof AttnkitError && err.status === 422 && err.code === 'no_weights' && err.field === 'mechanism' && /linear/.test(err.message));
    }
    // 500 positions: the query is 500 numbers, its weights 250000 > this server's max_elements of 200000
    const long = randn(500, 72);
    await assert.rejects(new client.FlashAttention({ heads: 1, dim: 1 }).attentionScores(long),
      (err) => err.status === 413 && err.code === 'too_many_elements' && /250000/.test(err.message));
    const ok = await new client.FlashAttention({ heads: 1, dim: 1 }).attentionScores(long.subarray(0, 400));
    assert.equal(ok.length, 160000);
    const flash = new client.FlashAttention({ heads, dim });
    flash.dispose();
    await assert.rejects(flash.attentionScores(Q, K), { code: 'disposed' });
  });
});

describe('createMask', () => {
  test('causal, padding and block masks', () => {
    assert.deepEqual(Array.from(createBoolMask('causal', 3)), [1, 0, 0, 1, 1, 0, 1, 1, 1]);
    assert.deepEqual(Array.from(createBoolMask('padding', 3, [2])), [1, 1, 0, 1, 1, 0, 1, 1, 0]);
    assert.deepEqual(Array.from(createBoolMask('block', 4, [2])), [1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 1, 1, 0, 0, 1, 1]);
    assert.deepEqual(Array.from(createMask('causal', 2)), [0, -Infinity, 0, 0]);
  });

  test('bad arguments throw AttnkitError naming the argument', () => {
    assert.throws(() => createMask('diagonal', 3), { code: 'config_error', field: 'kind' });
    assert.throws(() => createMask('causal', 0), { field: 'seq_len' });
    assert.throws(() => createMask('padding', 3, [3]), { field: 'positions' });
    assert.throws(() => createMask('causal', 3, [1]), { field: 'positions' });
  });
});
