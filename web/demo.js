// The offline demo: attnkit's classes on ONNX Runtime Web. State for tests: window.attnkitDemo.
import { LocalEngine } from 'attnkit-client';

const logEl = document.getElementById('log');
const select = document.getElementById('mechanism');
const heatmaps = document.getElementById('heatmaps');
const demo = { stage: 'starting', models: [], last: null, error: null, runs: 0 };
window.attnkitDemo = demo;

function log(text, cls) {
  logEl.textContent = '';
  for (const line of text.split('\n')) {
    const span = document.createElement('span');
    if (cls) span.className = cls;
    span.textContent = line + '\n';
    logEl.appendChild(span);
  }
}

/** Seeded standard normals (mulberry32 + Box-Muller), so a run can be repeated and checked. */
function randn(n, seed) {
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

const SEQUENCE = new Set(['flash', 'linear', 'local_global']);
const HYPERBOLIC = new Set(['hyperbolic', 'mixed_curvature', 'dual_space']);

/** Inputs `{query, keys, values}` as `{data, shape}` for a model's options (its metadata), length `L`. */
function inputsFor(name, o, L, seed) {
  const t = (shape, s, scale = 1) => ({ data: randn(shape.reduce((x, y) => x * y, 1), s).map((x) => x * scale), shape });
  if (SEQUENCE.has(name)) return { query: t([L, o.heads, o.dim], seed), keys: t([L, o.heads, o.dim], seed + 1), values: t([L, o.heads, o.dim], seed + 2) };
  if (name === 'multi_head' || name === 'self') return { query: t([L, o.model_dim], seed) };
  if (name === 'cross') return { query: t([L, o.query_dim], seed), keys: t([L, o.key_dim], seed + 1), values: t([L, o.key_dim], seed + 2) };
  const scale = HYPERBOLIC.has(name) ? 0.1 : 1; // points well inside the Poincaré ball
  return { query: t([L, o.dim], seed, scale), keys: t([L, o.dim], seed + 1, scale), values: t([L, o.dim], seed + 2, scale) };
}

// a perceptual colour scale (viridis stops), 0 -> dark blue, 1 -> yellow
const STOPS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
function colour(v) {
  const x = Math.min(Math.max(v, 0), 1) * (STOPS.length - 1);
  const i = Math.min(Math.floor(x), STOPS.length - 2);
  const f = x - i;
  return STOPS[i].map((c, k) => Math.round(c + f * (STOPS[i + 1][k] - c)));
}

/** Draw weights `(heads, Lq, Lk)` or `(Lq, Lk)`, one canvas per head, each scaled to its own maximum. */
function draw(weights) {
  heatmaps.textContent = '';
  const shape = weights.shape;
  const [lq, lk] = shape.slice(-2);
  const heads = shape.length > 2 ? shape.slice(0, -2).reduce((a, b) => a * b, 1) : 1;
  const cell = Math.max(2, Math.min(24, Math.floor(320 / Math.max(lq, lk))));
  for (let h = 0; h < heads; h++) {
    const block = weights.data.subarray(h * lq * lk, (h + 1) * lq * lk);
    const max = block.reduce((m, x) => Math.max(m, x), 0) || 1;
    const canvas = document.createElement('canvas');
    canvas.className = 'heatmap';
    canvas.width = lk * cell;
    canvas.height = lq * cell;
    const ctx = canvas.getContext('2d');
    for (let i = 0; i < lq; i++) {
      for (let j = 0; j < lk; j++) {
        const [r, g, b] = colour(block[i * lk + j] / max);
        ctx.fillStyle = `rgb(${r},${g},${b})`;
        ctx.fillRect(j * cell, i * cell, cell, cell);
      }
    }
    const fig = document.createElement('figure');
    const cap = document.createElement('figcaption');
    cap.textContent = `${heads > 1 ? `head ${h}: ` : ''}queries ↓ × keys →, max ${max.toFixed(3)}`;
    fig.append(canvas, cap);
    heatmaps.appendChild(fig);
  }
  const legend = document.createElement('figure');
  const bar = document.createElement('canvas');
  bar.width = 160;
  bar.height = 14;
  const bctx = bar.getContext('2d');
  for (let x = 0; x < bar.width; x++) {
    const [r, g, b] = colour(x / (bar.width - 1));
    bctx.fillStyle = `rgb(${r},${g},${b})`;
    bctx.fillRect(x, 0, 1, bar.height);
  }
  const cap = document.createElement('figcaption');
  cap.textContent = 'weight: 0 → the head\'s max';
  legend.append(bar, cap);
  heatmaps.appendChild(legend);
}

const params = new URLSearchParams(location.search);
const engine = new LocalEngine({ models: new URL('./models/', location.href).href, wasmPaths: new URL('./ort/', location.href).href,
  numThreads: Number(params.get('threads')) || 1 });

async function run() {
  const name = select.value;
  const model = demo.models.find((m) => m.name === name && m.output === 'forward' && !m.masked);
  const L = Math.max(1, Math.min(256, Number(document.getElementById('len').value) || 16));
  const seed = Number(document.getElementById('seed').value) || 0;
  const tensors = inputsFor(name, model.options, L, seed);
  let output = await engine.attention(name, tensors, {}); // the first run of a model also compiles it
  const t0 = performance.now();
  output = await engine.attention(name, tensors, {});
  const ms = performance.now() - t0;
  const weights = await engine.scores(name, tensors, {});
  const rows = weights.data.length / weights.shape[weights.shape.length - 1];
  let rowErr = 0;
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let j = 0; j < weights.shape[weights.shape.length - 1]; j++) s += weights.data[r * weights.shape[weights.shape.length - 1] + j];
    rowErr = Math.max(rowErr, Math.abs(s - 1));
  }
  demo.last = {
    mechanism: name, file: model.file, length: L, seed,
    inputs: Object.fromEntries(Object.entries(tensors).map(([k, v]) => [k, { data: Array.from(v.data), shape: v.shape }])),
    output: { data: Array.from(output.data), shape: output.shape }, weights: { data: Array.from(weights.data), shape: weights.shape },
  };
  demo.runs++;
  draw(weights);
  const head = Array.from(output.data.slice(0, 4), (x) => x.toFixed(4)).join(', ');
  log(`${name} (${model.file}) at length ${L}: output [${output.shape}] in ${ms.toFixed(1)} ms (warm run), first values ${head}\n`
    + `attention weights [${weights.shape}]: every row sums to 1 within ${rowErr.toExponential(1)}`, rowErr < 1e-4 ? 'ok' : 'err');
}

async function main() {
  demo.stage = 'loading models';
  const models = await engine.mechanisms();
  // models that take only query/keys/values (those with a mask or edge-feature input need inputs the demo does not draw)
  demo.models = models.map((m) => ({ ...m, masked: m.inputs.includes('mask') || m.inputs.includes('edge_features') }));
  const withWeights = [...new Set(demo.models.filter((m) => m.output === 'weights' && !m.masked).map((m) => m.name))].sort();
  for (const n of withWeights) select.add(new Option(n, n));
  select.value = withWeights.includes('flash') ? 'flash' : withWeights[0];
  const h = await engine.health();
  log(`${withWeights.length} mechanisms with attention weights loaded; ${h.runtime} ${h.version}`, 'ok');
  const button = document.getElementById('run');
  const go = () => {
    button.disabled = true;
    demo.stage = 'running';
    run().then(() => { demo.stage = 'done'; }, (err) => {
      demo.error = String(err.message || err);
      demo.stage = 'failed';
      log(`failed: ${demo.error}`, 'err');
    }).finally(() => { button.disabled = false; });
  };
  button.onclick = go;
  button.disabled = false;
  go();
}

main().catch((err) => {
  demo.error = String(err && err.message ? err.message : err);
  demo.stage = 'failed';
  log(`failed: ${demo.error}`, 'err');
});
