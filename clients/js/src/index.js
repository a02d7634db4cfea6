// attnkit JavaScript client: the spec's attention classes (all 13 mechanisms: FlashAttention,
// MultiHeadAttention, LinearAttention, HyperbolicAttention, ...; createMask) with `forward` and
// `attentionScores`, computed either by an attnkit server (`AttnkitClient`, HTTP) or in this process by
// ONNX Runtime on models written by `attnkit export` (`LocalEngine`, ./local.js). The classes are the same
// for both: only the constructor of the backend changes.
//
// No dependencies: the HTTP client needs only `fetch` (Node >= 18, every current browser). Float32Array in,
// Float32Array out. Tensors travel as raw little-endian float32 (application/octet-stream with shape
// headers) by default, or as base64 inside JSON with `transport: 'json'`.

import { resolveOption, snakeCase } from './options.js';

const LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;
const FIELDS = ['query', 'keys', 'values', 'mask'];
/** Keyword-only tensor inputs of some mechanisms: [camelCase name, the server's name, its shape header] (edge_featured's edge features). */
const EXTRA_FIELDS = [['edgeFeatures', 'edge_features', 'X-Attnkit-Edge-Features-Shape']];
/** `attnkit serve`'s default address (its default port is 8080). */
export const DEFAULT_BASE_URL = 'http://127.0.0.1:8080';

/** An error answered by the server (or raised by the client), with the server's code, message and field. */
export class AttnkitError extends Error {
  constructor(message, { code = 'client_error', field = null, status = 0, retryAfter = null, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'AttnkitError';
    this.code = code;
    this.field = field;
    this.status = status;
    this.retryAfter = retryAfter;
  }
}

// ------------------------------------------------------------------ helpers

function toSnakeOptions(options) {
  const out = {};
  for (const [k, v] of Object.entries(options || {})) {
    if (v === undefined) continue;
    out[snakeCase(k)] = v;
  }
  return out;
}

function product(shape) {
  return shape.reduce((a, b) => a * b, 1);
}

function asTensor(x, name) {
  if (x === undefined || x === null) return null;
  if (x instanceof Float32Array || x instanceof Uint8Array || x instanceof Float64Array) return { data: x, shape: [x.length] };
  if (Array.isArray(x)) return { data: Float32Array.from(x), shape: [x.length] };
  if (typeof x === 'object' && x.data !== undefined && Array.isArray(x.shape)) {
    const data = Array.isArray(x.data) ? Float32Array.from(x.data) : x.data;
    if (!(data instanceof Float32Array || data instanceof Uint8Array || data instanceof Float64Array)) {
      throw new AttnkitError(`${name}: data must be a Float32Array, Float64Array, Uint8Array or number[]`, { code: 'bad_tensor', field: name });
    }
    if (product(x.shape) !== data.length) {
      throw new AttnkitError(`${name}: shape [${x.shape}] holds ${product(x.shape)} elements, data has ${data.length}`,
        { code: 'bad_shape', field: name });
    }
    return { data, shape: x.shape.slice() };
  }
  throw new AttnkitError(`${name}: expected a Float32Array, a number[] or {data, shape}`, { code: 'bad_tensor', field: name });
}

function wireBytes(t) {
  // little-endian bytes of a tensor: float32 (Float64Array is narrowed), bool masks one byte each
  let arr = t.data;
  if (arr instanceof Float64Array) arr = Float32Array.from(arr);
  if (arr instanceof Uint8Array) return new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength);
  if (LITTLE_ENDIAN) return new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength);
  const out = new Uint8Array(arr.length * 4);
  const view = new DataView(out.buffer);
  arr.forEach((v, i) => view.setFloat32(i * 4, v, true));
  return out;
}

function fromWire(buffer, dtype) {
  const size = dtype === 'float64' ? 8 : 4;
  if (buffer.byteLength % size !== 0) {
    throw new AttnkitError(`response: ${buffer.byteLength} bytes is not a whole number of ${dtype} values`, { code: 'bad_response' });
  }
  if (LITTLE_ENDIAN) {
    return dtype === 'float64' ? Float32Array.from(new Float64Array(buffer)) : new Float32Array(buffer);
  }
  const view = new DataView(buffer);
  const out = new Float32Array(buffer.byteLength / size);
  for (let i = 0; i < out.length; i++) out[i] = size === 8 ? view.getFloat64(i * 8, true) : view.getFloat32(i * 4, true);
  return out;
}

function toBase64(bytes) {
  let s = '';
  for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(s);
}

function fromBase64(text) {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out.buffer;
}

function jsonTensor(t) {
  return { data: toBase64(wireBytes(t)), shape: t.shape, dtype: t.data instanceof Uint8Array ? 'bool' : 'float32' };
}

function queryValue(v) {
  if (v === null) return 'none';
  if (typeof v === 'boolean' || typeof v === 'number' || typeof v === 'string') return String(v);
  return undefined; // lists go through JSON
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// ------------------------------------------------------------------ the client
/** A connection to an attnkit server: `new AttnkitClient({baseUrl, apiKey})`. */
export class AttnkitClient {
  constructor({ baseUrl = DEFAULT_BASE_URL, apiKey = null, transport = 'binary', timeoutMs = 60000, maxRetries = 2,
    fetch: fetchImpl = null } = {}) {
    if (transport !== 'binary' && transport !== 'json') {
      throw new AttnkitError(`transport: expected 'binary' or 'json', got ${JSON.stringify(transport)}`, { code: 'config_error', field: 'transport' });
    }
    this.baseUrl = String(baseUrl).replace(/\/+$/, '');
    this.apiKey = apiKey;
    this.transport = transport;
    this.timeoutMs = timeoutMs;
    this.maxRetries = maxRetries;
    this._fetch = fetchImpl || globalThis.fetch.bind(globalThis);
    bindClasses(this);
  }

  async _request(path, init = {}) {
    const headers = { ...(init.headers || {}) };
    if (this.apiKey) headers.Authorization = `Bearer ${this.apiKey}`;
    for (let attempt = 0; ; attempt++) {
      const controller = new AbortController();
      const timer = setTimeout(() => controller.abort(), this.timeoutMs);
      let response;
      try {
        response = await this._fetch(this.baseUrl + path, { ...init, headers, signal: controller.signal });
      } catch (err) {
        const timedOut = controller.signal.aborted;
        throw new AttnkitError(timedOut ? `request to ${path} timed out after ${this.timeoutMs} ms` : `cannot reach ${this.baseUrl}: ${err.message}`,
          { code: timedOut ? 'timeout' : 'network_error', cause: err });
      } finally {
        clearTimeout(timer);
      }
      if (response.ok) return response;
      const retryAfter = Number(response.headers.get('retry-after')) || null;
      if (response.status === 503 && attempt < this.maxRetries) {
        await response.arrayBuffer().catch(() => null);
        await sleep(Math.min((retryAfter || 1) * 1000, 5000));
        continue;
      }
      let detail = null;
      try {
        detail = (await response.json()).error;
      } catch {
        detail = null;
      }
      throw new AttnkitError(detail?.message || `HTTP ${response.status} from ${path}`, {
        code: detail?.code || 'http_error', field: detail?.field ?? null, status: response.status, retryAfter,
      });
    }
  }

  /** `GET /health`: `{status, version}`. */
  async health() {
    return (await this._request('/health')).json();
  }

  /** `GET /v1/mechanisms`: every mechanism with its options, types and defaults. */
  async mechanisms() {
    return (await (await this._request('/v1/mechanisms')).json()).mechanisms;
  }

  /**
   * One forward pass of `mechanism` with snake_case `options`. Tensors are Float32Array (flat),
   * number[], or `{data, shape}`; a Uint8Array mask is boolean (1 = may attend).
   * Resolves to `{data: Float32Array, shape: number[]}`.
   */
  async attention(mechanism, { query, keys = null, values = null, mask = null, edgeFeatures = null } = {}, options = {}, { transport } = {}) {
    return this._compute(`/v1/attention/${encodeURIComponent(mechanism)}`, { query, keys, values, mask, edgeFeatures }, options, transport);
  }

  /**
   * The attention weights `softmax(scores + mask)` of `mechanism` (`POST /v1/attention/{mechanism}/scores`):
   * `{data, shape}` with shape `(..., heads, Lq, Lk)` (mechanisms without heads: `(..., Lq, Lk)`).
   * Keys default to the query; `values` is read only by mechanisms whose weights come from a forward
   * pass (multi-head attention with `vdim` different from `kdim`). A mechanism without weights (linear)
   * rejects with code `no_weights`, weights larger than the server's `max_elements` with status 413.
   */
  async scores(mechanism, { query, keys = null, values = null, mask = null, edgeFeatures = null } = {}, options = {}, { transport } = {}) {
    return this._compute(`/v1/attention/${encodeURIComponent(mechanism)}/scores`, { query, keys, values, mask, edgeFeatures }, options, transport);
  }

  async _compute(path, { query, keys, values, mask, edgeFeatures }, options, transport) {
    const tensors = { query: asTensor(query, 'query'), keys: asTensor(keys, 'keys'), values: asTensor(values, 'values'), mask: asTensor(mask, 'mask'),
      edgeFeatures: asTensor(edgeFeatures, 'edgeFeatures') };
    if (!tensors.query) throw new AttnkitError('query: required', { code: 'bad_request', field: 'query' });
    const opts = toSnakeOptions(options);
    let mode = transport || this.transport;
    const params = new URLSearchParams();
    for (const [k, v] of Object.entries(opts)) {
      const text = queryValue(v);
      if (text === undefined) mode = 'json';
      else params.set(k, text);
    }
    if (mode === 'binary') {
      const headers = { 'Content-Type': 'application/octet-stream', Accept: 'application/octet-stream' };
      const parts = [];
      for (const f of FIELDS) {
        const t = tensors[f];
        if (!t) continue;
        headers[`X-Attnkit-${f[0].toUpperCase()}${f.slice(1)}-Shape`] = t.shape.join(',');
        if (f === 'mask' && t.data instanceof Uint8Array) headers['X-Attnkit-Mask-Dtype'] = 'bool';
        else if (f === 'mask') {
          headers['X-Attnkit-Mask-Dtype'] = 'float32';
          headers['X-Attnkit-Mask-Kind'] = 'additive'; // a float mask is added to the scores
        }
        parts.push(wireBytes(t));
      }
      for (const [name, , header] of EXTRA_FIELDS) { // after the four, each named by its shape header
        const t = tensors[name];
        if (!t) continue;
        headers[header] = t.shape.join(',');
        parts.push(wireBytes(t));
      }
      const body = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
      let pos = 0;
      for (const p of parts) { body.set(p, pos); pos += p.length; }
      const qs = params.toString();
      const response = await this._request(path + (qs ? `?${qs}` : ''), { method: 'POST', headers, body });
      const shape = (response.headers.get('x-attnkit-shape') || '').split(',').filter((s) => s !== '').map(Number);
      const data = fromWire(await response.arrayBuffer(), response.headers.get('x-attnkit-dtype') || 'float32');
      return { data, shape };
    }
    const doc = { options: opts, encoding: 'base64' };
    for (const f of FIELDS) if (tensors[f]) doc[f] = jsonTensor(tensors[f]);
    for (const [name, wire] of EXTRA_FIELDS) if (tensors[name]) doc[wire] = jsonTensor(tensors[name]);
    if (tensors.mask && !(tensors.mask.data instanceof Uint8Array)) doc.mask_kind = 'additive';
    const response = await this._request(path, {
      method: 'POST', headers: { 'Content-Type': 'application/json', Accept: 'application/json' }, body: JSON.stringify(doc),
    });
    const out = (await response.json()).output;
    return { data: fromWire(fromBase64(out.data), out.dtype), shape: out.shape };
  }

  /**
   * `POST /v1/batch`: many requests in one round trip. Each item is
   * `{mechanism, query, keys?, values?, mask?, options?}`; the result array holds, in order,
   * `{data, shape}` or an `AttnkitError` for the items that failed.
   */
  async batch(items) {
    const requests = items.map((it, i) => {
      const doc = { mechanism: it.mechanism, options: toSnakeOptions(it.options), encoding: 'base64' };
      for (const f of FIELDS) {
        const t = asTensor(it[f], `requests[${i}].${f}`);
        if (t) doc[f] = jsonTensor(t);
        if (t && f === 'mask' && !(t.data instanceof Uint8Array)) doc.mask_kind = 'additive';
      }
      for (const [name, wire] of EXTRA_FIELDS) {
        const t = asTensor(it[name], `requests[${i}].${name}`);
        if (t) doc[wire] = jsonTensor(t);
      }
      return doc;
    });
    const response = await this._request('/v1/batch', {
      method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify({ requests, encoding: 'base64' }),
    });
    return (await response.json()).results.map((r) => (r.status === 200
      ? { data: fromWire(fromBase64(r.output.data), r.output.dtype), shape: r.output.shape }
      : new AttnkitError(r.error.message, { code: r.error.code, field: r.error.field, status: r.status })));
  }
}

// ------------------------------------------------------------------ the spec's classes
/** Whether `backend` computes attention: an `AttnkitClient`, a `LocalEngine`, or anything with their `attention` and `scores`. */
function isBackend(backend) {
  return !!backend && typeof backend.attention === 'function' && typeof backend.scores === 'function';
}

/**
 * The base of the spec's classes: options in camelCase, tensors as flat Float32Array (shaped by the
 * subclass's layout) or `{data, shape}`, computed by `backend` (an `AttnkitClient` or a `LocalEngine`).
 */
class Mechanism {
  constructor(mechanism, options, backend, defaults = {}) {
    if (!isBackend(backend)) {
      throw new AttnkitError(`${this.constructor.name}: pass an AttnkitClient or a LocalEngine (new backend.${this.constructor.name}(options))`,
        { code: 'config_error', field: 'client' });
    }
    this.mechanism = mechanism;
    this.options = {};
    for (const [k, v] of Object.entries(options || {})) if (v !== undefined) this.options[k] = v;
    this.defaults = defaults;
    this.client = backend;
    this.disposed = false;
  }

  /**
   * The value of option `name` (snake_case) as given under any of its names (`numHeads`, `num_heads`,
   * `heads`, ...), else the mechanism's default (attnkit's, used to shape flat arrays only).
   */
  opt(name) {
    for (const [k, v] of Object.entries(this.options)) if (resolveOption(k, [name]) === name) return v;
    return this.defaults[name];
  }

  /** The backend that computes (an `AttnkitClient` or a `LocalEngine`); `client` is the same object. */
  get backend() {
    return this.client;
  }

  /** Options as the server names them (camelCase -> snake_case). */
  serverOptions() {
    return toSnakeOptions(this.options);
  }

  /** Shapes for flat arrays; subclasses know their layout. Unknown layouts are sent flat. */
  shapes(Q, K, V) { // eslint-disable-line no-unused-vars
    return {};
  }

  /** A flat mask of `lq * lk` numbers as `(lq, lk)`; anything else is sent as it is. */
  shapeMask(mask, s) {
    if (mask !== null && mask !== undefined && !mask.shape && s.lq && s.lk && mask.length === s.lq * s.lk) {
      return { data: mask, shape: [s.lq, s.lk] };
    }
    return mask;
  }

  _checkAlive() {
    if (this.disposed) throw new AttnkitError(`${this.constructor.name}: this object was disposed; create a new one`, { code: 'disposed' });
  }

  /**
   * The request's tensors: flat arrays get the subclass's shapes. `extras.edgeFeatures` (edge_featured):
   * `{data, shape}`, or a flat array shaped `(...keys' leading axes, edgeDim)` from the keys' shape.
   */
  _tensors(Q, K, V, mask, extras = {}) {
    const flat = (x) => x instanceof Float32Array || x instanceof Float64Array || Array.isArray(x);
    const s = this.shapes(Q, K, V);
    const shaped = (x, shape) => (x !== null && x !== undefined && flat(x) && shape && product(shape) === x.length ? { data: x, shape } : x);
    const out = { query: shaped(Q, s.query), keys: shaped(K, s.keys), values: shaped(V, s.values), mask: this.shapeMask(mask, s) };
    const ef = extras ? extras.edgeFeatures : null;
    if (ef !== null && ef !== undefined) {
      const keys = out.keys && out.keys.shape ? out.keys.shape : out.query && out.query.shape ? out.query.shape : null;
      const lead = keys ? keys.slice(0, -1) : null;
      const n = lead ? product(lead) : 0;
      out.edgeFeatures = flat(ef) && n > 0 && ef.length % n === 0 ? { data: ef, shape: [...lead, ef.length / n] } : ef;
    }
    return out;
  }

  /**
   * `forward(Q, K, V, mask?, extras?)`: the attention output as a Float32Array (flat, like the spec).
   * `extras.edgeFeatures`: the edge features of `EdgeFeaturedAttention` (`edgeDim > 0`), `(..., k, edgeDim)`.
   */
  async forward(Q, K = null, V = null, mask = null, extras = {}) {
    return (await this.forwardWithShape(Q, K, V, mask, extras)).data;
  }

  /** Like `forward`, but resolves to `{data, shape}`. */
  async forwardWithShape(Q, K = null, V = null, mask = null, extras = {}) {
    this._checkAlive();
    return this.client.attention(this.mechanism, this._tensors(Q, K, V, mask, extras), this.serverOptions());
  }

  /**
   * The spec's `attentionScores(Q, K)`: the attention weights, flat (`heads * Lq * Lk` for one
   * sequence, each row of `Lk` summing to 1). `K` defaults to `Q`; `mask` as in `forward`.
   */
  async attentionScores(Q, K = null, mask = null, extras = {}) {
    return (await this.attentionScoresWithShape(Q, K, mask, extras)).data;
  }

  /** Like `attentionScores`, but resolves to `{data, shape}` (`shape` is `(..., heads, Lq, Lk)`); `extras` as in `forward`. */
  async attentionScoresWithShape(Q, K = null, mask = null, extras = {}) {
    this._checkAlive();
    return this.client.scores(this.mechanism, this._tensors(Q, K, null, mask, extras), this.serverOptions());
  }

  /** Time `forward` on random inputs of `seqLen` (the spec's benchmark; over HTTP it includes the round trip). */
  async benchmark(seqLen = 64, repeats = 5) {
    const [Q, K, V] = this.sampleInputs(seqLen);
    await this.forward(Q, K, V);
    const times = [];
    for (let i = 0; i < repeats; i++) {
      const t0 = performance.now();
      await this.forward(Q, K, V);
      times.push(performance.now() - t0);
    }
    times.sort((a, b) => a - b);
    const latencyMs = times[Math.floor(times.length / 2)];
    const bytes = 4 * (Q.length + (K ? K.length : 0) + 2 * (V ? V.length : Q.length));
    return { opsPerSecond: 1000 / latencyMs, latencyMs, throughputGBps: bytes / (latencyMs / 1000) / 1e9, simdEnabled: !!this.client.simd };
  }

  sampleInputs(seqLen) { // eslint-disable-line no-unused-vars
    throw new AttnkitError(`${this.constructor.name}: benchmark needs sampleInputs`, { code: 'config_error' });
  }

  dispose() {
    this.disposed = true;
  }
}

function randn(n) {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.sqrt(-2 * Math.log(1 - Math.random())) * Math.cos(2 * Math.PI * Math.random());
  return out;
}

/** Sequence layout `(L, heads, dim)`: flat `seqLen*heads*dim` arrays. */
class SequenceMechanism extends Mechanism {
  shapes(Q, K, V) {
    const heads = this.opt('heads');
    const dim = this.opt('dim');
    const per = heads * dim;
    const lq = Q && per && Q.length % per === 0 ? Q.length / per : null;
    const lk = K && per && K.length % per === 0 ? K.length / per : (K ? null : lq);
    const dv = V && lk && V.length % (lk * heads) === 0 ? V.length / (lk * heads) : null;
    return { query: lq && [lq, heads, dim], keys: lk && K && [lk, heads, dim], values: dv && [lk, heads, dv], lq, lk };
  }

  sampleInputs(seqLen) {
    const n = seqLen * this.opt('heads') * this.opt('dim');
    return [randn(n), randn(n), randn(n)];
  }
}

/** Exact attention over heads (`heads`, `dim` per head): Q, K, V are flat `seqLen*heads*dim` arrays (or `{data, shape}`). */
export class FlashAttention extends SequenceMechanism {
  constructor(options = {}, client) {
    super('flash', options, client, { heads: 8, dim: 64 });
  }
}

/** Linear attention (Katharopoulos et al. 2020): `{dim, heads, featureMap, eps}`; flat `seqLen*heads*dim` arrays. */
export class LinearAttention extends SequenceMechanism {
  constructor(options = {}, client) {
    super('linear', options, client, { heads: 8 });
  }
}

/** Sliding-window attention with global tokens (Longformer, Beltagy et al. 2020): `{dim, heads, window, globalTokens}`. */
export class LocalGlobalAttention extends SequenceMechanism {
  constructor(options = {}, client) {
    super('local_global', options, client, { heads: 8, dim: 64 });
  }
}

/** Multi-head attention with learned projections: `{modelDim, heads, dropout, bias, kdim, vdim}`; inputs `seqLen*modelDim`. */
export class MultiHeadAttention extends Mechanism {
  constructor(options = {}, client) {
    super('multi_head', options, client, { heads: 8 });
  }

  widths() {
    const modelDim = this.opt('model_dim');
    const kdim = this.opt('kdim');
    const vdim = this.opt('vdim');
    return [modelDim, kdim || modelDim, vdim || modelDim];
  }

  shapes(Q, K, V) {
    const [dq, dk, dv] = this.widths();
    const rows = (x, d) => (x && d && x.length % d === 0 ? x.length / d : null);
    const lq = rows(Q, dq);
    const lk = K ? rows(K, dk) : lq;
    return { query: lq && [lq, dq], keys: K && lk && [lk, dk], values: V && rows(V, dv) && [rows(V, dv), dv], lq, lk };
  }

  sampleInputs(seqLen) {
    const [dq, dk, dv] = this.widths();
    return [randn(seqLen * dq), randn(seqLen * dk), randn(seqLen * dv)];
  }
}

/** Multi-head self-attention (keys and values are the query). */
export class SelfAttention extends MultiHeadAttention {
  constructor(options = {}, client) {
    super(options, client);
    this.mechanism = 'self';
  }
}

/** Cross-attention of a query sequence over a key/value sequence of another width: `{queryDim, keyDim, heads}`. */
export class CrossAttention extends MultiHeadAttention {
  constructor(options = {}, client) {
    super(options, client);
    this.mechanism = 'cross';
  }

  widths() {
    const keyDim = this.opt('key_dim');
    return [this.opt('query_dim'), keyDim, keyDim];
  }
}

/** Row layout `(n, dim)` without heads (hyperbolic, mixed-curvature, graph mechanisms): flat `n*dim` arrays. */
class RowsMechanism extends Mechanism {
  shapes(Q, K, V) {
    const d = this.opt('dim');
    const rows = (x) => (x && d && x.length % d === 0 ? x.length / d : null);
    const lq = rows(Q);
    const lk = K ? rows(K) : lq;
    const dv = V && lk && V.length % lk === 0 ? V.length / lk : null;
    return { query: lq && [lq, d], keys: K && lk && [lk, d], values: dv && [lk, dv], lq, lk };
  }

  sampleInputs(seqLen) {
    const scaled = (n) => randn(n).map((x) => x * 0.1);
    const n = seqLen * this.opt('dim');
    return [scaled(n), scaled(n), scaled(n)];
  }
}

/** Hyperbolic attention on the Poincaré ball: `{dim, curvature, temperature, aggregation}`; inputs `n*dim`. */
export class HyperbolicAttention extends RowsMechanism {
  constructor(options = {}, client) {
    super('hyperbolic', options, client);
  }
}

/** Attention over a product of Euclidean and hyperbolic factors: `{dim, euclideanDim, curvature, ...}`; inputs `n*dim`. */
export class MixedCurvatureAttention extends RowsMechanism {
  constructor(options = {}, client) {
    super('mixed_curvature', options, client, { dim: 64 });
  }
}

/** A mix of Euclidean and hyperbolic attention outputs: `{dim, curvature, mix, ...}`; inputs `n*dim`. */
export class DualSpaceAttention extends RowsMechanism {
  constructor(options = {}, client) {
    super('dual_space', options, client, { dim: 64 });
  }
}

/** Mixture of attention experts with top-k routing: `{dim, numExperts, topK, experts, ...}`; inputs `n*dim`. */
export class MoEAttention extends RowsMechanism {
  constructor(options = {}, client) {
    super('moe', options, client, { dim: 64 });
  }
}

/** Graph attention with rotary position encodings: `{dim, base, scaling, ...}`; node features `n*dim`. */
export class GraphRoPEAttention extends RowsMechanism {
  constructor(options = {}, client) {
    super('graph_rope', options, client, { dim: 64 });
  }
}

/** Graph attention (GAT-style) with optional edge features: `{dim, heads, edgeDim, ...}`; node features `n*dim`. */
export class EdgeFeaturedAttention extends RowsMechanism {
  constructor(options = {}, client) {
    super('edge_featured', options, client, { dim: 64 });
  }
}

/** Neighbour attention (the spec's `ScaledDotProduct(dim)`): one query `(dim)` over `k` keys `(k*dim)`. */
export class ScaledDotProduct extends Mechanism {
  constructor(options = {}, client) {
    super('scaled_dot_product', options, client);
  }

  shapes(Q, K, V) {
    const d = this.opt('dim');
    const k = K && d && K.length % d === 0 ? K.length / d : null;
    const dv = V && k && V.length % k === 0 ? V.length / k : null;
    return { query: Q && Q.length === d ? [d] : null, keys: k && [k, d], values: dv && [k, dv] };
  }

  /** A flat mask of `k` numbers is one entry per neighbour. */
  shapeMask(mask, s) {
    return mask && !mask.shape && s.keys && mask.length === s.keys[0] ? { data: mask, shape: [s.keys[0]] } : mask;
  }

  sampleInputs(seqLen) {
    const d = this.opt('dim');
    return [randn(d), randn(seqLen * d), randn(seqLen * d)];
  }
}

/** The 13 classes by the registry name of their mechanism. */
export const MECHANISM_CLASSES = {
  cross: CrossAttention, dual_space: DualSpaceAttention, edge_featured: EdgeFeaturedAttention, flash: FlashAttention,
  graph_rope: GraphRoPEAttention, hyperbolic: HyperbolicAttention, linear: LinearAttention, local_global: LocalGlobalAttention,
  mixed_curvature: MixedCurvatureAttention, moe: MoEAttention, multi_head: MultiHeadAttention, scaled_dot_product: ScaledDotProduct,
  self: SelfAttention,
};

/** Give `backend` the spec's classes bound to it: `new backend.FlashAttention({heads, dim})`. */
export function bindClasses(backend) {
  for (const cls of Object.values(MECHANISM_CLASSES)) {
    backend[cls.name] = class extends cls { constructor(o) { super(o, backend); } };
    Object.defineProperty(backend[cls.name], 'name', { value: cls.name });
  }
  return backend;
}

// ------------------------------------------------------------------ masks
function maskArgs(type, seqLen, positions) {
  if (!['causal', 'padding', 'block'].includes(type)) {
    throw new AttnkitError(`kind: expected one of causal, padding, block, got ${JSON.stringify(type)}`, { code: 'config_error', field: 'kind' });
  }
  if (!Number.isInteger(seqLen) || seqLen <= 0) {
    throw new AttnkitError(`seq_len: expected a positive integer, got ${seqLen}`, { code: 'config_error', field: 'seq_len' });
  }
  const pos = positions ? Array.from(positions) : [];
  for (const p of pos) {
    if (!Number.isInteger(p) || p < 0 || p >= seqLen) {
      throw new AttnkitError(`positions: expected indices in [0, ${seqLen}), got ${p}`, { code: 'config_error', field: 'positions' });
    }
  }
  if (type === 'causal' && pos.length) {
    throw new AttnkitError('positions: not used by a causal mask; pass none', { code: 'config_error', field: 'positions' });
  }
  return pos;
}

/**
 * A boolean `(seqLen, seqLen)` mask as a Uint8Array, 1 = may attend (attnkit's `create_mask`):
 * `causal` (query i sees keys 0..i), `padding` (keys at `positions` are padding), `block`
 * (block-diagonal; `positions` are block starts, 0 implied).
 */
export function createBoolMask(type, seqLen, positions) {
  const pos = maskArgs(type, seqLen, positions);
  const out = new Uint8Array(seqLen * seqLen);
  const padded = new Set(pos);
  const starts = [...new Set([0, ...pos])].sort((a, b) => a - b);
  const block = new Int32Array(seqLen);
  starts.forEach((s, b) => { for (let i = s; i < seqLen; i++) block[i] = b; });
  for (let i = 0; i < seqLen; i++) {
    for (let j = 0; j < seqLen; j++) {
      let ok = true;
      if (type === 'causal') ok = j <= i;
      else if (type === 'padding') ok = !padded.has(j);
      else ok = block[i] === block[j];
      out[i * seqLen + j] = ok ? 1 : 0;
    }
  }
  return out;
}

/**
 * The spec's `createMask(type, seqLen, positions)`: a Float32Array `(seqLen*seqLen)` to add to the
 * scores, 0 where a query may attend and -Infinity where it may not (a fully masked row gives zeros).
 */
export function createMask(type, seqLen, positions) {
  const allowed = createBoolMask(type, seqLen, positions);
  return Float32Array.from(allowed, (a) => (a ? 0 : -Infinity));
}

export { LocalEngine, onnxMetadata } from './local.js';
export { OPTION_ALIASES, resolveOption } from './options.js';

export default AttnkitClient;
