// The client in headless Chromium: a page served from 127.0.0.1 imports the ES module and calls a live
// server (CORS allows exactly the page's origin).
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { createMask } from '../src/index.js';
import { maxAbsDiff, randn, refAttention, startServer } from './helpers.js';
import { CHROMIUM_ARGS, chromiumPath, playwrightChromium, serveStatic } from './static.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const exe = chromiumPath();
const chromium = await playwrightChromium();
const skip = !exe ? 'no Chromium found (install Debian chromium or set CHROMIUM_PATH)'
  : !chromium ? 'playwright-core is not installed (npm install in clients/js)' : false;

const PAGE = `<!doctype html><meta charset="utf-8"><title>attnkit client</title>
<script type="module">
import { AttnkitClient, AttnkitError, createMask } from '/client/index.js';
window.run = async (baseUrl, Q, K, V, heads, dim) => {
  const client = new AttnkitClient({ baseUrl });
  const attn = new client.FlashAttention({ heads, dim });
  const out = await attn.forward(new Float32Array(Q), new Float32Array(K), new Float32Array(V));
  const causal = await attn.forward(new Float32Array(Q), new Float32Array(Q), new Float32Array(Q), createMask('causal', Q.length / (heads * dim)));
  let error = null;
  try {
    await new client.FlashAttention({ heads: heads + 1, dim }).forward(new Float32Array(Q));
  } catch (e) {
    error = { isAttnkitError: e instanceof AttnkitError, code: e.code, field: e.field, status: e.status, message: e.message };
  }
  return { out: Array.from(out), causal: Array.from(causal), error, ua: navigator.userAgent };
};
window.ready = true;
</script>`;

let page;
let api;
let browser;

before(async () => {
  if (skip) return;
  page = await serveStatic({ '/client/': path.join(here, '..', 'src') }, { '/index.html': PAGE });
  api = await startServer({ ATTNKIT_SERVER_CORS_ORIGINS: page.url });
  browser = await chromium.launch({ executablePath: exe, args: CHROMIUM_ARGS, headless: true });
});

after(async () => {
  await browser?.close();
  await api?.stop();
  await page?.close();
});

test('FlashAttention from a page in headless Chromium', { skip, timeout: 120000 }, async () => {
  const tab = await browser.newPage();
  const errors = [];
  tab.on('pageerror', (e) => errors.push(e.message));
  await tab.goto(`${page.url}/index.html`);
  await tab.waitForFunction(() => window.ready === true);
  const heads = 2;
  const dim = 4;
  const Q = randn(5 * heads * dim, 61);
  const K = randn(7 * heads * dim, 62);
  const V = randn(7 * heads * dim, 63);
  const res = await tab.evaluate(([u, q, k, v, h, d]) => window.run(u, q, k, v, h, d), [api.url, Array.from(Q), Array.from(K), Array.from(V), heads, dim]);
  assert.deepEqual(errors, []);
  assert.match(res.ua, /HeadlessChrome|Chrome/);
  assert.ok(maxAbsDiff(res.out, refAttention(Q, K, V, { heads, dim })) < 1e-5);
  assert.ok(maxAbsDiff(res.causal, refAttention(Q, Q, Q, { heads, dim, mask: (i, j) => j <= i })) < 1e-5);
  assert.deepEqual(res.error && { ...res.error, message: undefined },
    { isAttnkitError: true, code: 'shape_error', field: 'query', status: 422, message: undefined });
  assert.equal(createMask('causal', 2)[1], -Infinity);
});
