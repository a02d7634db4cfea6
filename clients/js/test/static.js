// A tiny static file server on 127.0.0.1 for the browser tests (GET only, no directory listing).
import { createReadStream, statSync } from 'node:fs';
import http from 'node:http';
import path from 'node:path';

const TYPES = {
  '.html': 'text/html; charset=utf-8', '.js': 'text/javascript', '.mjs': 'text/javascript', '.json': 'application/json',
  '.wasm': 'application/wasm', '.zip': 'application/zip', '.whl': 'application/zip', '.css': 'text/css', '.map': 'application/json',
};

/** Serve `mounts` ({'/prefix/': '/abs/dir'}) and `pages` ({'/path': 'html'}) with extra `headers`; resolves to {url, close}. */
export function serveStatic(mounts, pages = {}, headers = {}) {
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://127.0.0.1');
    if (req.method !== 'GET') { res.writeHead(405).end(); return; }
    if (pages[url.pathname] !== undefined) {
      res.writeHead(200, { ...headers, 'Content-Type': 'text/html; charset=utf-8' }).end(pages[url.pathname]);
      return;
    }
    for (const [prefix, dir] of Object.entries(mounts)) {
      if (!url.pathname.startsWith(prefix)) continue;
      const rel = decodeURIComponent(url.pathname.slice(prefix.length));
      const file = path.resolve(dir, rel);
      if (!file.startsWith(path.resolve(dir) + path.sep)) break;
      try {
        if (!statSync(file).isFile()) break;
      } catch {
        break;
      }
      res.writeHead(200, { ...headers, 'Content-Type': TYPES[path.extname(file)] || 'application/octet-stream' });
      createReadStream(file).pipe(res);
      return;
    }
    res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found');
  });
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => {
      resolve({ url: `http://127.0.0.1:${server.address().port}`, close: () => new Promise((r) => server.close(r)) });
    });
  });
}

/** Path of a Chromium to drive: $CHROMIUM_PATH, else Debian's /usr/bin/chromium; null if none. */
export function chromiumPath() {
  for (const p of [process.env.CHROMIUM_PATH, '/usr/bin/chromium', '/usr/bin/chromium-browser']) {
    if (!p) continue;
    try {
      if (statSync(p).isFile()) return p;
    } catch {
      // keep looking
    }
  }
  return null;
}

export const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update',
  '--disable-sync', '--disable-dev-shm-usage', '--no-first-run',
];

/** playwright-core's chromium launcher, or null when the dev dependency is not installed. */
export async function playwrightChromium() {
  try {
    return (await import('playwright-core')).chromium;
  } catch {
    return null;
  }
}
