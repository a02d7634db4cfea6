// The TypeScript declarations: correct use type-checks, and misuse is caught (strict mode).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const dir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const tsc = path.join(dir, 'node_modules', 'typescript', 'bin', 'tsc');
const skip = existsSync(tsc) ? false : 'typescript is not installed (npm install in clients/js)';
const FLAGS = ['--noEmit', '--strict', '--target', 'es2022', '--module', 'nodenext', '--moduleResolution', 'nodenext'];

function check(file) {
  return spawnSync(process.execPath, [tsc, ...FLAGS, path.join(dir, 'types', file)], { encoding: 'utf8', timeout: 120000 });
}

test('index.d.ts accepts the documented API', { skip, timeout: 150000 }, () => {
  const r = check('usage.ts');
  assert.equal(r.status, 0, r.stdout + r.stderr);
});

test('index.d.ts rejects wrong option types, missing required options and sync use of forward and attentionScores', { skip, timeout: 150000 }, () => {
  const r = check('misuse.ts');
  assert.notEqual(r.status, 0);
  assert.match(r.stdout, /misuse\.ts\(3,\d+\): error TS2322/); // heads: 'two'
  assert.match(r.stdout, /misuse\.ts\(4,\d+\): error TS2322/); // Promise is not a number
  assert.match(r.stdout, /misuse\.ts\(5,\d+\): error TS2345.*modelDim|modelDim/s); // modelDim is required
  assert.match(r.stdout, /misuse\.ts\(6,\d+\): error TS2740/); // attentionScores resolves later: a Promise, not weights
  assert.match(r.stdout, /misuse\.ts\(7,\d+\): error TS2554/); // attentionScores(Q, K?, mask?, extras?) takes no fifth argument
});
