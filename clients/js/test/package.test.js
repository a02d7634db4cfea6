// The npm package: `npm pack` holds the sources, their types, README and LICENSE, and nothing else.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const dir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

test('npm pack --dry-run lists only src, README.md, LICENSE and package.json', { timeout: 60000 }, () => {
  const r = spawnSync('npm', ['pack', '--dry-run', '--json', '--ignore-scripts'], { cwd: dir, encoding: 'utf8', timeout: 60000 });
  assert.equal(r.status, 0, r.stderr);
  const files = JSON.parse(r.stdout)[0].files.map((f) => f.path).sort();
  assert.deepEqual(files, ['LICENSE', 'README.md', 'package.json', 'src/index.d.ts', 'src/index.js', 'src/local.d.ts', 'src/local.js', 'src/options.js']);
  const pkg = JSON.parse(readFileSync(path.join(dir, 'package.json'), 'utf8'));
  assert.equal(pkg.license, 'MIT');
  assert.match(readFileSync(path.join(dir, 'LICENSE'), 'utf8'), /^MIT License/);
  for (const peer of ['onnxruntime-node', 'onnxruntime-web']) {
    assert.ok(pkg.peerDependencies[peer], peer);
    assert.equal(pkg.peerDependenciesMeta[peer].optional, true, peer);
  }
  assert.deepEqual(pkg.dependencies || {}, {});
});
