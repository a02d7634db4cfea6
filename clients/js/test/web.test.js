// The browser build (web/): Pyodide from the npm package boots in headless Chromium from a page served
// on 127.0.0.1, installs the attnkit wheel and imports it. NumPy for WebAssembly comes only from
// Pyodide's package repository, which is not reachable offline: when it is missing the page must say so
// (and the test checks that); when a full Pyodide distribution is served (ATTNKIT_PYODIDE_DIR), the
// test also checks FlashAttention against the page's float64 reference.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';

import { CHROMIUM_ARGS, chromiumPath, playwrightChromium, serveStatic } from './static.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, '..', '..', '..');
const pyodideDir = process.env.ATTNKIT_PYODIDE_DIR || path.join(here, '..', 'node_modules', 'pyodide');
const python = process.env.ATTNKIT_PYTHON || 'python3';
const exe = chromiumPath();
const chromium = await playwrightChromium();
const skip = !exe ? 'no Chromium found' : !chromium ? 'playwright-core is not installed'
  : !existsSync(path.join(pyodideDir, 'pyodide.asm.wasm')) ? `no Pyodide runtime in ${pyodideDir} (npm install)` : false;

let out;
let site;
let browser;

before(async () => {
  if (skip) return;
  out = mkdtempSync(path.join(os.tmpdir(), 'attnkit-web-'));
  execFileSync(python, [path.join(root, 'web', 'build.py'), '--out', out, '--pyodide-dir', pyodideDir, '--no-onnx'], { stdio: 'pipe', timeout: 240000 });
  site = await serveStatic({ '/': out });
  browser = await chromium.launch({ executablePath: exe, args: CHROMIUM_ARGS, headless: true });
});

after(async () => {
  await browser?.close();
  await site?.close();
  if (out) rmSync(out, { recursive: true, force: true });
});

test('web/ boots Pyodide offline and imports attnkit', { skip, timeout: 180000 }, async () => {
  const tab = await browser.newPage();
  const pageErrors = [];
  tab.on('pageerror', (e) => pageErrors.push(e.message));
  // only 127.0.0.1 may be reached: any other request is refused, so the test proves the page works offline
  const outside = [];
  await tab.route('**/*', (route) => {
    const u = new URL(route.request().url());
    if (u.hostname === '127.0.0.1') return route.continue();
    outside.push(u.href);
    return route.abort();
  });
  await tab.goto(`${site.url}/pyodide.html`);
  await tab.waitForFunction(() => ['done', 'failed'].includes(window.attnkitStatus?.stage), null, { timeout: 150000 });
  const status = await tab.evaluate(() => window.attnkitStatus);
  const text = await tab.textContent('#log');
  assert.equal(status.stage, 'done', `page failed: ${status.error}\n${text}`);
  assert.deepEqual(pageErrors, []);
  assert.match(status.python, /^3\.\d+/);
  const version = execFileSync(python, ['-c', 'import attnkit; print(attnkit.__version__)']).toString().trim();
  assert.equal(status.attnkit, version);
  assert.match(status.arrayApiCompat, /^\d+\.\d+/);
  if (status.numpy === 'unavailable') {
    // honest outcome offline: the page explains why the mechanisms cannot run
    assert.match(text, /NumPy is not available/);
    assert.ok(outside.every((u) => !u.includes('127.0.0.1')));
  } else {
    assert.ok(status.result, text);
    assert.deepEqual(status.result.shape, [32, 4, 16]);
    assert.ok(status.result.max_abs_err < 1e-4, text);
  }
});
