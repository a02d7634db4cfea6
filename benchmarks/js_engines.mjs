// The JS side of benchmarks/js_engines.py: LocalEngine on onnxruntime-node (this process) and on
// onnxruntime-web in headless Chromium (page served on 127.0.0.1, cross-origin isolated so wasm threads
// work). Reads one JSON line per timing request on stdin ({"L": 512}) and answers one JSON line with
// milliseconds of one call in each ({"node": ms, "web": ms}); the Python side interleaves these with its
// own ONNX Runtime calls. Arguments: MODELS_DIR DATA_DIR THREADS.
import { createRequire } from 'node:module';
import path from 'node:path';
import readline from 'node:readline';
import { readFileSync } from 'node:fs';
import { fileURLToPath, pathToFileURL } from 'node:url';

const here = path.dirname(fileURLToPath(import.meta.url));
const js = path.resolve(here, '..', 'clients', 'js');
const req = createRequire(path.join(js, 'package.json'));
const { LocalEngine } = await import(pathToFileURL(path.join(js, 'src', 'index.js')).href);
const { serveStatic, chromiumPath, CHROMIUM_ARGS } = await import(pathToFileURL(path.join(js, 'test', 'static.js')).href);
const [models, data, threadsArg] = process.argv.slice(2);
const threads = Number(threadsArg) || 2;
const out = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);

const engine = new LocalEngine({ models, numThreads: threads, ort: req('onnxruntime-node') });
const flash = new engine.FlashAttention({ heads: 8, dim: 64 });
const inputs = new Map();
function input(L) {
  if (!inputs.has(L)) inputs.set(L, new Float32Array(readFileSync(path.join(data, `q${L}.bin`)).buffer.slice(0)));
  return inputs.get(L);
}

let page = null;
let browser = null;
let site = null;
let webError = null;
const exe = chromiumPath();
try {
  if (!exe) throw new Error('no Chromium');
  const { chromium } = req('playwright-core');
  site = await serveStatic({ '/node_modules/': path.join(js, 'node_modules'), '/src/': path.join(js, 'src'), '/models/': models, '/data/': data }, {
    '/bench.html': `<!doctype html><script type="importmap">{"imports": {"onnxruntime-web": "/node_modules/onnxruntime-web/dist/ort.wasm.min.mjs"}}</script>
<script type="module">
import { LocalEngine } from '/src/index.js';
const engine = new LocalEngine({ models: '/models/', numThreads: ${threads} });
const flash = new engine.FlashAttention({ heads: 8, dim: 64 });
const cache = new Map();
window.once = async (L) => {
  if (!cache.has(L)) cache.set(L, new Float32Array(await (await fetch('/data/q' + L + '.bin')).arrayBuffer()));
  const q = cache.get(L);
  const t0 = performance.now();
  const r = await flash.forward(q, q, q);
  const ms = performance.now() - t0;
  if (r.length !== q.length) throw new Error('bad output length');
  return ms;
};
window.info = () => ({ isolated: crossOriginIsolated, threads: ${threads} });
window.ready = true;
</script>`,
  }, { 'Cross-Origin-Opener-Policy': 'same-origin', 'Cross-Origin-Embedder-Policy': 'require-corp' });
  browser = await chromium.launch({ executablePath: exe, args: CHROMIUM_ARGS, headless: true });
  page = await browser.newPage();
  await page.goto(`${site.url}/bench.html`);
  await page.waitForFunction(() => window.ready === true, null, { timeout: 60000 });
} catch (err) {
  webError = String(err.message || err).split('\n')[0];
  page = null;
}

const info = page ? await page.evaluate(() => window.info()) : null;
const versions = (await engine.health()).version;
out({ ready: true, ortNode: versions, web: info, webError, chromium: browser ? browser.version() : null });

const rl = readline.createInterface({ input: process.stdin });
for await (const line of rl) {
  const msg = JSON.parse(line);
  if (msg.quit) break;
  const q = input(msg.L);
  const res = {};
  let t0 = performance.now();
  await flash.forward(q, q, q);
  res.node = performance.now() - t0;
  if (page) {
    try {
      res.web = await page.evaluate((L) => window.once(L), msg.L);
    } catch (err) {
      res.webError = String(err.message || err).split('\n')[0];
    }
  }
  out(res);
}
await browser?.close();
await site?.close();
await engine.dispose();
process.exit(0);
