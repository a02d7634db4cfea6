// attnkit's in-process engine: the spec's classes computed by ONNX Runtime on models written by
// `attnkit export`, with no server. Node uses `onnxruntime-node` (native), browsers `onnxruntime-web`
// (WebAssembly); both are optional peer dependencies, imported only when a model is first run.
//
//   attnkit export --type flash -O heads=8 -O dim=64 -o models/flash.onnx
//   attnkit export --type flash -O heads=8 -O dim=64 --attention-weights -o models/flash.weights.onnx
//
//   const engine = new LocalEngine({ models: 'models' });        // instead of new AttnkitClient({ baseUrl })
//   const flash = new engine.FlashAttention({ heads: 8, dim: 64 });
//   const out = await flash.forward(Q, K, V);                     // Float32Array, as from the server
//
// Every exported file records what it computes in its ONNX `metadata_props` (`attnkit.mechanism`,
// `attnkit.options`, `attnkit.output`); the engine reads them, picks the file whose mechanism and options
// match the class's (camelCase or any alias of attnkit's option table), and refuses, naming the option,
// when none does: an exported graph has its options and weights baked in.

import { AttnkitError, bindClasses } from './index.js';
import { OPTION_ALIASES, resolveOption, snakeCase } from './options.js';

export { OPTION_ALIASES, resolveOption };

/** Options that choose how NumPy computes (tiling, checks, engine), not what: an exported graph ignores them. */
const GRAPH_NEUTRAL = new Set(['block_size', 'simd', 'check_finite', 'engine', 'chunk_size', 'keep_weights']);
/** Mechanisms whose output is not a softmax-weighted sum: they have no attention weights. */
const NO_WEIGHTS = new Set(['linear', 'dual_space', 'moe']);

const isNode = typeof process !== 'undefined' && !!(process.versions && process.versions.node) && typeof window === 'undefined';

function sameValue(a, b) {
  if (a === undefined) a = null;
  if (b === undefined) b = null;
  if (typeof a === 'number' && typeof b === 'number') return a === b || Math.abs(a - b) <= 1e-9 * Math.max(1, Math.abs(a));
  if (Array.isArray(a) && Array.isArray(b)) return a.length === b.length && a.every((x, i) => sameValue(x, b[i]));
  return a === b;
}

// ------------------------------------------------------------------ ONNX metadata (protobuf, read by hand)
function readVarint(buf, pos) {
  let value = 0;
  let mul = 1;
  for (;;) {
    if (pos >= buf.length) throw new Error('truncated varint');
    const b = buf[pos++];
    value += (b & 0x7f) * mul;
    if (b < 0x80) return [value, pos];
    mul *= 128;
  }
}

/**
 * The `metadata_props` of an ONNX `ModelProto` (field 14: repeated `{key = 1, value = 2}`) as an object.
 * Only the top level of the message is walked; the graph is skipped by its length.
 */
export function onnxMetadata(bytes) {
  const buf = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const text = new TextDecoder();
  const out = {};
  let pos = 0;
  while (pos < buf.length) {
    let tag;
    [tag, pos] = readVarint(buf, pos);
    const field = Math.floor(tag / 8);
    const wire = tag % 8;
    if (wire === 0) [, pos] = readVarint(buf, pos);
    else if (wire === 1) pos += 8;
    else if (wire === 5) pos += 4;
    else if (wire === 2) {
      let len;
      [len, pos] = readVarint(buf, pos);
      if (field === 14) {
        const end = pos + len;
        let key = '';
        let value = '';
        while (pos < end) {
          let t;
          let n;
          [t, pos] = readVarint(buf, pos);
          [n, pos] = readVarint(buf, pos);
          const s = text.decode(buf.subarray(pos, pos + n));
          if (t >>> 3 === 1) key = s;
          else if (t >>> 3 === 2) value = s;
          pos += n;
        }
        out[key] = value;
      } else pos += len;
    } else throw new Error(`not an ONNX model (protobuf wire type ${wire})`);
  }
  return out;
}

// ------------------------------------------------------------------ tensors
function product(shape) {
  return shape.reduce((a, b) => a * b, 1);
}

function toShaped(x, name) {
  if (x === null || x === undefined) return null;
  let data;
  let shape;
  if (x instanceof Float32Array || x instanceof Float64Array || x instanceof Uint8Array || Array.isArray(x)) {
    throw new AttnkitError(`${name}: a flat array of ${x.length} numbers does not fit the class's options; pass {data, shape}`,
      { code: 'bad_shape', field: name });
  } else if (typeof x === 'object' && x.data !== undefined && Array.isArray(x.shape)) {
    ({ data, shape } = x);
  } else {
    throw new AttnkitError(`${name}: expected a Float32Array, a number[] or {data, shape}`, { code: 'bad_tensor', field: name });
  }
  if (Array.isArray(data)) data = Float32Array.from(data);
  if (data instanceof Float64Array) data = Float32Array.from(data);
  if (!(data instanceof Float32Array || data instanceof Uint8Array)) {
    throw new AttnkitError(`${name}: data must be a Float32Array, Float64Array, Uint8Array or number[]`, { code: 'bad_tensor', field: name });
  }
  if (product(shape) !== data.length) {
    throw new AttnkitError(`${name}: shape [${shape}] holds ${product(shape)} elements, data has ${data.length}`, { code: 'bad_shape', field: name });
  }
  return { data, shape: shape.slice() };
}

// ------------------------------------------------------------------ the engine
/**
 * Runs attnkit's mechanisms in this process with ONNX Runtime, on models written by `attnkit export`.
 * The same API as `AttnkitClient` (`attention`, `scores`, `batch`, `mechanisms`, `health` and the bound
 * classes `engine.FlashAttention(...)`), so switching from a server to local changes only the constructor.
 */
export class LocalEngine {
  /**
   * @param {object} init
   * @param {string|URL|Record<string, string|Uint8Array|ArrayBuffer>} init.models a folder (Node), a base
   *   URL (browser, or `http(s)://` in Node) holding `*.onnx` files, or a map of name -> path/URL/bytes.
   *   In a browser the folder's `index.json` (`{"models": [file, ...]}`) lists the files; without one the
   *   engine looks for `<mechanism>.onnx` and `<mechanism>.weights.onnx`.
   * @param {object} [init.ort] an ONNX Runtime module (default: `import('onnxruntime-node')` in Node,
   *   `import('onnxruntime-web')` elsewhere).
   * @param {object} [init.sessionOptions] passed to `InferenceSession.create`.
   * @param {number} [init.numThreads] threads of ONNX Runtime (intra-op in Node; wasm threads in browsers).
   * @param {string|object} [init.wasmPaths] where onnxruntime-web finds its `.wasm`/`.mjs` files.
   */
  constructor({ models, ort = null, sessionOptions = {}, numThreads = null, wasmPaths = null } = {}) {
    if (models === undefined || models === null || models === '') {
      throw new AttnkitError('models: required (a folder or URL of models written by `attnkit export`)', { code: 'config_error', field: 'models' });
    }
    this.models = models;
    this._ortInit = ort;
    this.sessionOptions = { ...sessionOptions };
    this.numThreads = numThreads;
    this.wasmPaths = wasmPaths;
    this.simd = true;
    this._entries = null; // [{file, meta, bytes?, session?}]
    this._queue = Promise.resolve();
    this.disposed = false;
    bindClasses(this);
  }

  async _ort() {
    if (this._ortModule) return this._ortModule;
    let ort = this._ortInit;
    if (!ort) {
      const name = isNode ? 'onnxruntime-node' : 'onnxruntime-web';
      try {
        ort = await import(/* @vite-ignore */ name);
      } catch (err) {
        throw new AttnkitError(`LocalEngine needs the optional peer dependency ${name} (npm install ${name}): ${err.message}`,
          { code: 'config_error', field: 'ort', cause: err });
      }
    }
    ort = ort.default && ort.default.InferenceSession ? ort.default : ort;
    if (ort.env && ort.env.wasm) {
      if (this.wasmPaths) ort.env.wasm.wasmPaths = this.wasmPaths;
      if (this.numThreads && !isNode) ort.env.wasm.numThreads = this.numThreads;
    }
    this._ortModule = ort;
    return ort;
  }

  _isUrl(x) {
    return x instanceof URL || (typeof x === 'string' && (/^(https?|file|blob|data):/.test(x) || !isNode));
  }

  _join(base, file) {
    if (base instanceof URL || /^[a-z]+:/.test(String(base)) || !isNode) {
      const b = String(base);
      const dirUrl = b.endsWith('/') ? b : `${b}/`;
      return new URL(file, typeof location !== 'undefined' ? new URL(dirUrl, location.href) : dirUrl).href;
    }
    return `${String(base).replace(/\/+$/, '')}/${file}`;
  }

  async _read(source) {
    if (source instanceof Uint8Array) return source;
    if (source instanceof ArrayBuffer) return new Uint8Array(source);
    if (this._isUrl(source)) {
      const href = String(source);
      const r = await fetch(typeof location !== 'undefined' ? new URL(href, location.href) : href);
      if (!r.ok) return null;
      return new Uint8Array(await r.arrayBuffer());
    }
    const fs = await import(/* @vite-ignore */ 'node:fs/promises');
    try {
      return new Uint8Array(await fs.readFile(String(source)));
    } catch (err) {
      if (err.code === 'ENOENT') return null;
      throw err;
    }
  }

  /** The model files this engine can see, with their metadata (read once). */
  async _catalog(mechanism) {
    if (!this._entries) this._entries = new Map();
    const m = this.models;
    let sources;
    if (typeof m === 'object' && !(m instanceof URL)) {
      sources = Object.entries(m);
    } else if (!this._isUrl(m)) {
      const fs = await import(/* @vite-ignore */ 'node:fs/promises');
      let files;
      try {
        files = (await fs.readdir(String(m))).filter((f) => f.endsWith('.onnx')).sort();
      } catch (err) {
        throw new AttnkitError(`models: cannot read the folder ${m}: ${err.message}`, { code: 'config_error', field: 'models', cause: err });
      }
      sources = files.map((f) => [f, this._join(m, f)]);
    } else {
      if (this._index === undefined) {
        const bytes = await this._read(this._join(m, 'index.json')).catch(() => null);
        this._index = bytes ? JSON.parse(new TextDecoder().decode(bytes)) : null;
      }
      const files = this._index ? (Array.isArray(this._index) ? this._index : this._index.models)
        : [`${mechanism}.onnx`, `${mechanism}.weights.onnx`];
      sources = files.map((f) => [f, this._join(m, f)]);
    }
    const out = [];
    for (const [file, source] of sources) {
      if (!this._entries.has(file)) {
        const bytes = await this._read(source);
        if (!bytes) continue;
        let meta;
        try {
          meta = onnxMetadata(bytes);
        } catch (err) {
          throw new AttnkitError(`models: ${file} is not an ONNX model (${err.message})`, { code: 'config_error', field: 'models' });
        }
        let options = null;
        try {
          options = JSON.parse(meta['attnkit.options'] || 'null');
        } catch {
          options = null;
        }
        this._entries.set(file, {
          file, bytes, session: null, mechanism: meta['attnkit.mechanism'] || null, output: meta['attnkit.output'] || 'forward',
          options, inputs: (meta['attnkit.inputs'] || '').split(',').filter(Boolean), version: meta['attnkit.version'] || null,
        });
      }
      out.push(this._entries.get(file));
    }
    return out;
  }

  /** Why `entry`'s options differ from `options` (snake_case), or null when they agree. */
  _mismatch(entry, options) {
    const names = new Set(Object.keys(entry.options || {}));
    for (const [name, value] of Object.entries(options)) {
      const target = resolveOption(name, names);
      if (target === null) return { field: name, message: `${name}: not an option of ${entry.mechanism} (${[...names].sort().join(', ')})` };
      if (GRAPH_NEUTRAL.has(target)) continue;
      if (!sameValue(entry.options[target], value)) {
        return { field: name, message: `${name}: ${entry.file} was exported with ${target}=${JSON.stringify(entry.options[target])}, not ${JSON.stringify(value)}` };
      }
    }
    return null;
  }

  _exportHint(mechanism, output, options) {
    const flags = Object.entries(options).filter(([k]) => !GRAPH_NEUTRAL.has(k))
      .map(([k, v]) => `-O ${k}=${Array.isArray(v) ? v.join(',') : v === null ? 'none' : v}`).join(' ');
    return `attnkit export --type ${mechanism} ${flags}${flags ? ' ' : ''}${output === 'weights' ? '--attention-weights ' : ''}`
      + `-o ${mechanism}${output === 'weights' ? '.weights' : ''}.onnx`;
  }

  async _select(mechanism, output, options, withMask = false, withEdges = false) {
    this._checkAlive();
    if (output === 'weights' && NO_WEIGHTS.has(mechanism)) {
      throw new AttnkitError(`mechanism: '${mechanism}' has no attention weights (its output is not a softmax-weighted sum)`,
        { code: 'no_weights', field: 'mechanism', status: 422 });
    }
    const entries = (await this._catalog(mechanism)).filter((e) => e.mechanism === mechanism && e.output === output);
    if (!entries.length) {
      throw new AttnkitError(`no ${output === 'weights' ? 'attention-weights ' : ''}model of '${mechanism}' in ${this.models}; `
        + `write one with: ${this._exportHint(mechanism, output, options)}`, { code: 'no_model', field: 'mechanism', status: 404 });
    }
    // a model with a mask (edge features) input when a mask (edge features) is given, one without otherwise
    // (either, when only one kind exists)
    // (then any other: running it names the input that is missing or has no place in it)
    const fit = entries.filter((e) => e.inputs.includes('mask') === withMask && e.inputs.includes('edge_features') === withEdges);
    let first = null;
    for (const e of [...fit, ...entries.filter((x) => !fit.includes(x))]) {
      const why = this._mismatch(e, options);
      if (!why) return e;
      first = first || why;
    }
    throw new AttnkitError(`${first.message}; export a matching model: ${this._exportHint(mechanism, output, options)}`,
      { code: 'model_mismatch', field: first.field, status: 409 });
  }

  async _session(entry) {
    if (!entry.session) {
      const ort = await this._ort();
      const opts = { ...this.sessionOptions };
      if (isNode && this.numThreads && opts.intraOpNumThreads === undefined) opts.intraOpNumThreads = this.numThreads;
      entry.session = ort.InferenceSession.create(entry.bytes, opts);
      entry.session.then(() => { entry.bytes = null; }, () => { entry.session = null; }); // keep the bytes only until loaded
    }
    return entry.session;
  }

  _checkAlive() {
    if (this.disposed) throw new AttnkitError('LocalEngine: this engine was disposed; create a new one', { code: 'disposed' });
  }

  async _run(mechanism, output, { query, keys = null, values = null, mask = null, edgeFeatures = null } = {}, options = {}) {
    const snake = {};
    for (const [k, v] of Object.entries(options || {})) if (v !== undefined) snake[snakeCase(k)] = v;
    const given0 = (x) => x !== null && x !== undefined;
    const entry = await this._select(mechanism, output, snake, given0(mask), given0(edgeFeatures));
    let session;
    try {
      session = await this._session(entry);
    } catch (err) {
      if (err instanceof AttnkitError) throw err;
      throw new AttnkitError(`${entry.file}: ONNX Runtime cannot load it (${String(err.message || err).split('\n')[0]})`,
        { code: 'bad_model', field: 'models', cause: err });
    }
    const ort = await this._ort();
    const q = toShaped(query, 'query');
    if (!q) throw new AttnkitError('query: required', { code: 'bad_request', field: 'query' });
    const k = toShaped(keys, 'keys');
    const v = toShaped(values, 'values');
    const m = toShaped(mask, 'mask');
    const ef = toShaped(edgeFeatures, 'edgeFeatures');
    const names = session.inputNames;
    const given = { query: q, key: k, value: v, mask: m, edge_features: ef };
    const label = { query: 'query', key: 'keys', value: 'values', mask: 'mask', edge_features: 'edgeFeatures' };
    for (const [name, t] of Object.entries(given)) {
      if (t && !names.includes(name) && !(name === 'value' && output === 'weights')) {
        const how = name === 'mask' ? 'export it with an example mask (attnkit export --mask FILE)'
          : name === 'edge_features' ? 'edge features are an input of edge_featured models exported with edge_dim > 0 (attnkit export --type edge_featured -O edge_dim=N)'
            : 'export it with example keys and values (attnkit export -q/-k/-v)';
        throw new AttnkitError(`${label[name]}: ${entry.file} takes only ${names.join(', ')}; ${how}`, { code: 'model_mismatch', field: label[name], status: 409 });
      }
    }
    const feeds = {};
    for (const name of names) {
      let t = given[name];
      if (!t && name === 'key') t = q;
      if (!t && name === 'value') t = k || q;
      if (!t) {
        throw new AttnkitError(`${label[name] || name}: ${entry.file} needs this input (${names.join(', ')})`, { code: 'bad_request', field: label[name] || name, status: 400 });
      }
      feeds[name] = name === 'mask' ? this._maskTensor(ort, session, t)
        : new ort.Tensor('float32', t.data instanceof Float32Array ? t.data : Float32Array.from(t.data), t.shape);
    }
    let results;
    const run = this._queue.then(() => session.run(feeds));
    this._queue = run.catch(() => null);
    try {
      results = await run;
    } catch (err) {
      throw new AttnkitError(`${mechanism}: ONNX Runtime refused the inputs (${String(err.message || err).split('\n')[0]})`,
        { code: 'bad_shape', field: 'query', status: 422, cause: err });
    }
    const out = results[session.outputNames[0]];
    const data = out.data instanceof Float32Array ? out.data : Float32Array.from(out.data);
    return { data, shape: Array.from(out.dims, Number) };
  }

  _maskTensor(ort, session, t) {
    const meta = (session.inputMetadata || []).find((x) => x.name === 'mask');
    const wantBool = meta ? meta.type === 'bool' : t.data instanceof Uint8Array;
    if (wantBool) {
      if (t.data instanceof Uint8Array) return new ort.Tensor('bool', t.data, t.shape);
      if (!t.data.every((x) => x === 0 || x === -Infinity)) {
        throw new AttnkitError('mask: this model takes a bool mask (1 = attend); a float mask converts only when it holds 0 and -Infinity',
          { code: 'bad_tensor', field: 'mask', status: 422 });
      }
      return new ort.Tensor('bool', Uint8Array.from(t.data, (x) => (x === 0 ? 1 : 0)), t.shape);
    }
    const data = t.data instanceof Uint8Array ? Float32Array.from(t.data, (x) => (x ? 0 : -Infinity)) : t.data;
    return new ort.Tensor('float32', data, t.shape);
  }

  /** One forward pass: `{data: Float32Array, shape}`, as `AttnkitClient.attention`. */
  async attention(mechanism, tensors = {}, options = {}) {
    return this._run(mechanism, 'forward', tensors, options);
  }

  /** The attention weights `(..., heads, Lq, Lk)`, from the model exported with `--attention-weights`. */
  async scores(mechanism, tensors = {}, options = {}) {
    return this._run(mechanism, 'weights', tensors, options);
  }

  /** Many requests, in order: `{data, shape}` or an `AttnkitError` per item (as `AttnkitClient.batch`). */
  async batch(items) {
    const out = [];
    for (const it of items) {
      try {
        out.push(await this.attention(it.mechanism, it, it.options || {}));
      } catch (err) {
        out.push(err instanceof AttnkitError ? err : new AttnkitError(String(err.message || err), { code: 'internal_error', cause: err }));
      }
    }
    return out;
  }

  /** The models this engine can see: `[{name, output, file, options}]` (options as exported). */
  async mechanisms() {
    const entries = await this._catalog('');
    return entries.filter((e) => e.mechanism).map((e) => ({ name: e.mechanism, output: e.output, file: e.file, options: e.options, inputs: e.inputs }));
  }

  /** `{status: 'ok', version, runtime}`: the ONNX Runtime in use. */
  async health() {
    const ort = await this._ort();
    const versions = (ort.env && ort.env.versions) || {};
    return { status: 'ok', version: versions.node || versions.web || versions.common || 'unknown', runtime: isNode && versions.node ? 'onnxruntime-node' : 'onnxruntime-web' };
  }

  /** Release every ONNX Runtime session; the engine refuses work afterwards. */
  async dispose() {
    this.disposed = true;
    const entries = this._entries ? [...this._entries.values()] : [];
    this._entries = null;
    for (const e of entries) {
      if (e.session) await (await e.session).release?.();
    }
  }
}

export default LocalEngine;
