// LocalEngine: attnkit's mechanisms exported by `attnkit.export_onnx` (web/onnx_models.py, run here in
// Python) and run by onnxruntime-node in this process and by onnxruntime-web in headless Chromium
// offline; every number is compared with attnkit's NumPy output computed in Python for the same inputs
// at a length (13) other than the export example's (8). The web/ demo is opened too: two mechanisms
// are run in the page and checked against Python, and a screenshot is saved.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { AttnkitError, LocalEngine, OPTION_ALIASES } from '../src/index.js';
import { maxAbsDiff } from './helpers.js';
import { CHROMIUM_ARGS, chromiumPath, playwrightChromium, serveStatic } from './static.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const pkg = path.resolve(here, '..');
const root = path.resolve(pkg, '..', '..');
const python = process.env.ATTNKIT_PYTHON || 'python3';
const require = createRequire(import.meta.url);
const has = (name) => { try { require.resolve(name); return true; } catch { return false; } };
const pythonOk = (() => {
  try {
    execFileSync(python, ['-c', 'import attnkit, ndonnx, onnx'], { stdio: 'pipe', timeout: 120000 });
    return true;
  } catch {
    return false;
  }
})();
const skipNode = !pythonOk ? `${python} lacks attnkit/ndonnx/onnx` : !has('onnxruntime-node') ? 'onnxruntime-node is not installed' : false;
const exe = chromiumPath();
const chromium = await playwrightChromium();
const ortWeb = path.join(pkg, 'node_modules', 'onnxruntime-web', 'dist');
const skipBrowser = skipNode || (!exe ? 'no Chromium found' : !chromium ? 'playwright-core is not installed'
  : !existsSync(path.join(ortWeb, 'ort-wasm-simd-threaded.wasm')) ? 'onnxruntime-web is not installed' : false);

let dir;
let cases;

before(() => {
  if (skipNode) return;
  dir = mkdtempSync(path.join(os.tmpdir(), 'attnkit-local-'));
  execFileSync(python, [path.join(root, 'web', 'onnx_models.py'), path.join(dir, 'models'), '--cases', path.join(dir, 'cases.json')],
    { stdio: 'pipe', timeout: 400000 });
  cases = JSON.parse(readFileSync(path.join(dir, 'cases.json'), 'utf8'));
});

after(() => {
  if (dir) rmSync(dir, { recursive: true, force: true });
});

const f32 = (t) => Float32Array.from(t.data);
/** A case's inputs as the spec's classes take them: flat Float32Array (the class shapes them) or {data, shape}. */
function args(c) {
  const flat = !['scaled_dot_product', 'graph_rope', 'edge_featured'].includes(c.mechanism);
  const ins = c.inputs.map((t) => (flat ? f32(t) : { data: f32(t), shape: t.shape }));
  while (ins.length < 3) ins.push(null);
  const mask = c.mask ? Uint8Array.from(c.mask.data) : null;
  return [ins, mask];
}

/** Runs every case through `engine`; resolves to [{name, out, outShape, outErr, wShape, wErr}]. Shared by Node and the page. */
async function runCases(engine, all) {
  const res = [];
  const f = (t) => Float32Array.from(t.data);
  for (const [name, c] of Object.entries(all)) {
    const flat = !['scaled_dot_product', 'graph_rope', 'edge_featured'].includes(c.mechanism);
    const ins = c.inputs.map((t) => (flat ? f(t) : { data: f(t), shape: t.shape }));
    while (ins.length < 3) ins.push(null);
    const mask = c.mask ? Uint8Array.from(c.mask.data) : null;
    const extras = Object.fromEntries(Object.entries(c.extras || {}).map(([k, t]) => [k, { data: f(t), shape: t.shape }]));
    const m = new engine[c.class](c.options);
    const out = await m.forwardWithShape(ins[0], ins[1], ins[2], mask, extras);
    const row = { name, outShape: out.shape, outErr: Math.max(...out.data.map((x, i) => Math.abs(x - c.output.data[i]))) };
    if (out.data.length !== c.output.data.length) row.outErr = Infinity;
    if (c.weights) {
      const w = await m.attentionScoresWithShape(ins[0], ins[1], mask, extras);
      row.wShape = w.shape;
      row.wErr = w.data.length === c.weights.data.length ? Math.max(...w.data.map((x, i) => Math.abs(x - c.weights.data[i]))) : Infinity;
    }
    res.push(row);
  }
  return res;
}

function checkRows(rows) {
  assert.equal(rows.length, Object.keys(cases).length);
  for (const r of rows) {
    const c = cases[r.name];
    assert.deepEqual(r.outShape, c.output.shape, r.name);
    assert.ok(r.outErr < 2e-5, `${r.name}: output differs from attnkit by ${r.outErr}`);
    if (c.weights) {
      assert.deepEqual(r.wShape, c.weights.shape, r.name);
      assert.ok(r.wErr < 2e-6, `${r.name}: weights differ from attnkit by ${r.wErr}`);
    }
  }
}

test('Node: all 13 mechanisms (and a masked flash, edge features) equal attnkit in Python, output and weights', { skip: skipNode, timeout: 120000 }, async () => {
  const engine = new LocalEngine({ models: path.join(dir, 'models') });
  const rows = await runCases(engine, cases);
  checkRows(rows);
  assert.equal(new Set(rows.map((r) => cases[r.name].mechanism)).size, 13);
  assert.equal(rows.filter((r) => r.wShape).length, 12); // all but linear, dual_space and moe (no weights)
  assert.ok(cases.moe && cases.edge_featured_edges.extras.edgeFeatures);
  const h = await engine.health();
  assert.equal(h.runtime, 'onnxruntime-node');
  await engine.dispose();
});

test('Node: options by camelCase and alias, mismatches and missing models refused with the export command', { skip: skipNode, timeout: 60000 }, async () => {
  const engine = new LocalEngine({ models: path.join(dir, 'models') });
  const c = cases.local_global;
  const [ins] = args(c);
  // globalTokens, window_size (alias of window), numHeads (alias of heads), blockSize (ignored: tiling only)
  const lg = new engine.LocalGlobalAttention({ dim: 8, numHeads: 2, window_size: 4, globalTokens: 1, blockSize: 64 });
  assert.ok(maxAbsDiff(await lg.forward(ins[0], ins[1], ins[2]), c.output.data) < 2e-5);
  const wrong = new engine.LocalGlobalAttention({ dim: 8, heads: 2, window: 4, globalTokens: 2 });
  await assert.rejects(wrong.forward(ins[0], ins[1], ins[2]), (e) => e instanceof AttnkitError && e.code === 'model_mismatch'
    && e.field === 'global_tokens' && /global_tokens=1, not 2/.test(e.message) && /attnkit export --type local_global/.test(e.message));
  await assert.rejects(new engine.LinearAttention({ dim: 8, heads: 2 }).attentionScores(f32(cases.linear.inputs[0])),
    (e) => e.code === 'no_weights' && e.status === 422);
  await assert.rejects(new engine.MoEAttention({ dim: 8, numExperts: 3 }).forward(new Float32Array(16)),
    (e) => e.code === 'model_mismatch' && e.field === 'num_experts' && /attnkit export --type moe/.test(e.message));
  await assert.rejects(new engine.MoEAttention({ dim: 8 }).attentionScores(new Float32Array(16)), (e) => e.code === 'no_weights');
  await assert.rejects(new engine.GraphRoPEAttention({ dim: 8, base: 7 }).forward(new Float32Array(16)), (e) => e.code === 'model_mismatch' && e.field === 'base');
  await assert.rejects(new engine.FlashAttention({ heads: 2, dim: 8, bogusOption: 1 }).forward(new Float32Array(16)),
    (e) => e.code === 'model_mismatch' && e.field === 'bogus_option');
  // shapes the graph refuses are an AttnkitError, not a crash
  await assert.rejects(engine.attention('flash', { query: { data: new Float32Array(12), shape: [2, 2, 3] } }, { heads: 2 }),
    (e) => e instanceof AttnkitError && e.code === 'bad_shape');
  // a mask the model has no input for is refused, naming the export flag
  const [lins] = args(cases.linear);
  await assert.rejects(new engine.LinearAttention({ dim: 8, heads: 2 }).forward(lins[0], lins[1], lins[2], new Uint8Array(169).fill(1)),
    (e) => e.code === 'model_mismatch' && e.field === 'mask' && /--mask/.test(e.message));
  const [fins] = args(cases.flash);
  assert.equal(new engine.FlashAttention({}).client, engine);
  const list = await engine.mechanisms();
  assert.ok(list.some((m) => m.name === 'flash' && m.output === 'weights' && m.options.heads === 2));
  await engine.dispose();
  await assert.rejects(engine.attention('flash', { query: { data: fins[0], shape: [13, 2, 8] } }), (e) => e.code === 'disposed');
});

test('Node: edge features go to the edge_featured graph (flat or shaped), are read, and are refused where no input takes them', { skip: skipNode, timeout: 60000 }, async () => {
  const engine = new LocalEngine({ models: path.join(dir, 'models') });
  const c = cases.edge_featured_edges;
  const [ins] = args(c);
  const ef = c.extras.edgeFeatures;
  const gat = new engine.EdgeFeaturedAttention({ dim: 8, heads: 2, edgeDim: 3 });
  // flat edge features take the keys' leading axes: (Lk, edgeDim)
  const out = await gat.forwardWithShape(ins[0], ins[1], null, null, { edgeFeatures: f32(ef) });
  assert.deepEqual(out.shape, c.output.shape);
  assert.ok(maxAbsDiff(out.data, c.output.data) < 2e-5);
  const w = await engine.scores('edge_featured', { query: ins[0], keys: ins[1], edgeFeatures: { data: f32(ef), shape: ef.shape } }, { edgeDim: 3 });
  assert.ok(maxAbsDiff(w.data, c.weights.data) < 2e-6);
  // other edge features give another output: they are an input of the graph, not baked in
  const moved = await gat.forward(ins[0], ins[1], null, null, { edgeFeatures: f32(ef).map((x) => x + 1) });
  assert.ok(maxAbsDiff(moved, c.output.data) > 1e-3);
  await assert.rejects(gat.forward(ins[0], ins[1]), (e) => e.code === 'bad_request' && e.field === 'edgeFeatures');
  const plain = new engine.EdgeFeaturedAttention({ dim: 8, heads: 2 });
  const base = cases.edge_featured;
  assert.ok(maxAbsDiff(await plain.forward(...args(base)[0].slice(0, 2)), base.output.data) < 2e-5); // the model without edge features
  await assert.rejects(new engine.FlashAttention({ heads: 2, dim: 8 }).forward(f32(cases.flash.inputs[0]), null, null, null, { edgeFeatures: { data: new Float32Array(3), shape: [1, 3] } }),
    (e) => e.code === 'model_mismatch' && e.field === 'edgeFeatures' && /edge_dim/.test(e.message));
  await engine.dispose();
});

test('OPTION_ALIASES is attnkit\'s table', { skip: skipNode, timeout: 60000 }, () => {
  const py = execFileSync(python, ['-c', 'import json; from attnkit.mechanisms.registry import OPTION_ALIASES as A; print(json.dumps({k: list(v) for k, v in A.items()}))']);
  assert.deepEqual(OPTION_ALIASES, JSON.parse(py.toString()));
});

// ------------------------------------------------------------------ the browser
let site;
let browser;
const shots = process.env.ATTNKIT_SCREENSHOT_DIR || path.join(os.tmpdir(), 'attnkit-screens');
const COI = { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp' };

async function offlinePage() {
  const tab = await browser.newPage();
  const errors = [];
  const outside = [];
  tab.on('pageerror', (e) => errors.push(e.message));
  await tab.route('**/*', (route) => {
    const u = new URL(route.request().url());
    if (u.hostname === '127.0.0.1') return route.continue();
    outside.push(u.href);
    return route.abort();
  });
  return { tab, errors, outside };
}

test('Chromium: LocalEngine on onnxruntime-web (wasm from node_modules, offline) equals attnkit', { skip: skipBrowser, timeout: 180000 }, async () => {
  const web = path.join(dir, 'site');
  execFileSync(python, [path.join(root, 'web', 'build.py'), '--out', web, '--models', path.join(dir, 'models'), '--no-pyodide'], { stdio: 'pipe', timeout: 120000 });
  site = await serveStatic({ '/node_modules/': path.join(pkg, 'node_modules'), '/': web }, {
    '/engine.html': `<!doctype html><script type="importmap">{"imports": {"onnxruntime-web": "/node_modules/onnxruntime-web/dist/ort.wasm.min.mjs"}}</script>
      <script type="module">import * as m from '/attnkit/index.js'; window.attnkit = m; window.ready = true;</script>`,
  }, COI);
  browser = await chromium.launch({ executablePath: exe, args: CHROMIUM_ARGS, headless: true });
  const { tab, errors, outside } = await offlinePage();
  await tab.goto(`${site.url}/engine.html`);
  await tab.waitForFunction(() => window.ready === true, null, { timeout: 30000 });
  const rows = await tab.evaluate(async ({ all, src }) => {
    const runCases = eval(`(${src})`); // eslint-disable-line no-eval
    const engine = new window.attnkit.LocalEngine({ models: '/models/' });
    const r = await runCases(engine, all);
    return { rows: r, health: await engine.health() };
  }, { all: cases, src: runCases.toString() });
  checkRows(rows.rows);
  assert.equal(rows.health.runtime, 'onnxruntime-web');
  assert.deepEqual(errors, []);
  assert.deepEqual(outside, []);
  await tab.close();
});

test('web/ demo: two mechanisms run offline in Chromium, their numbers equal attnkit in Python, heatmap drawn', { skip: skipBrowser, timeout: 180000 }, async () => {
  assert.ok(site && browser, 'the previous test serves the site');
  const { tab, errors, outside } = await offlinePage();
  await tab.setViewportSize({ width: 1000, height: 760 });
  await tab.goto(`${site.url}/index.html`);
  const checked = [];
  for (const [name, len] of [['flash', 12], ['hyperbolic', 10]]) {
    if (checked.length) {
      await tab.selectOption('#mechanism', name);
      await tab.fill('#len', String(len));
      await tab.click('#run');
    }
    await tab.waitForFunction((n) => window.attnkitDemo?.stage === 'failed' || (window.attnkitDemo?.stage === 'done' && window.attnkitDemo.last?.mechanism === n),
      name, { timeout: 60000 });
    const demo = await tab.evaluate(() => window.attnkitDemo);
    assert.equal(demo.stage, 'done', demo.error);
    const last = demo.last;
    // the reference: attnkit's NumPy forward and attention weights for the page's own inputs
    const req = path.join(dir, `${name}.json`);
    writeFileSync(req, JSON.stringify({ stem: last.file.replace(/\.onnx$/, ''), inputs: Object.values(last.inputs) }));
    const ref = JSON.parse(execFileSync(python, [path.join(root, 'web', 'onnx_models.py'), '--reference', req]).toString());
    assert.deepEqual(last.output.shape, ref.output.shape);
    assert.deepEqual(last.weights.shape, ref.weights.shape);
    assert.ok(maxAbsDiff(last.output.data, ref.output.data) < 2e-5, `${name} output`);
    assert.ok(maxAbsDiff(last.weights.data, ref.weights.data) < 2e-6, `${name} weights`);
    const canvases = await tab.$$eval('#heatmaps canvas.heatmap', (cs) => cs.map((c) => {
      const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
      const colours = new Set();
      for (let i = 0; i < px.length; i += 4) colours.add(`${px[i]},${px[i + 1]},${px[i + 2]}`);
      return { w: c.width, h: c.height, colours: colours.size };
    }));
    const heads = last.weights.shape.length > 2 ? last.weights.shape[0] : 1;
    assert.equal(canvases.length, heads);
    for (const c of canvases) assert.ok(c.w > 0 && c.h === c.w && c.colours > 8, JSON.stringify(c));
    checked.push(name);
    mkdirSync(shots, { recursive: true });
    await tab.screenshot({ path: path.join(shots, `web-demo-${name}.png`), fullPage: true });
  }
  assert.deepEqual(checked, ['flash', 'hyperbolic']);
  assert.deepEqual(errors, []);
  assert.deepEqual(outside, []);
  await tab.close();
  await browser.close();
  await site.close();
});
