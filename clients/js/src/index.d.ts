// Type declarations of the attnkit JavaScript client.

export type Tensor = Float32Array | Float64Array | number[] | { data: Float32Array | Float64Array | Uint8Array | number[]; shape: number[] };
export type Mask = Float32Array | Uint8Array | { data: Float32Array | Uint8Array; shape: number[] };
export type OptionValue = number | boolean | string | null | Array<number | boolean | string | null>;

/** `attnkit serve`'s default address, `http://127.0.0.1:8080` (the client's default `baseUrl`). */
export const DEFAULT_BASE_URL: string;

export interface ClientOptions {
  /** Server address (default `http://127.0.0.1:8080`, where `attnkit serve` listens by default). */
  baseUrl?: string;
  /** Sent as `Authorization: Bearer <apiKey>` when the server requires a key. */
  apiKey?: string | null;
  /** `'binary'` (raw float32, the default) or `'json'` (base64 inside JSON). */
  transport?: 'binary' | 'json';
  /** Abort a request after this many milliseconds (default 60000). */
  timeoutMs?: number;
  /** Retries of a 503 answer, honouring Retry-After (default 2). */
  maxRetries?: number;
  /** A `fetch` implementation (default: the global one). */
  fetch?: typeof fetch;
}

export interface TensorResult {
  data: Float32Array;
  shape: number[];
}

export interface OptionSpec {
  name: string;
  type: string;
  default: unknown;
  required: boolean;
}

export interface MechanismInfo {
  name: string;
  class: string;
  summary: string;
  options: OptionSpec[];
  /** Whether `POST /v1/attention/{name}/scores` gives this mechanism's attention weights. */
  has_scores: boolean;
}

export interface BenchmarkResult {
  opsPerSecond: number;
  latencyMs: number;
  throughputGBps: number;
  simdEnabled: boolean;
}

export interface BatchItem {
  mechanism: string;
  query: Tensor;
  keys?: Tensor | null;
  values?: Tensor | null;
  mask?: Mask | null;
  /** `EdgeFeaturedAttention`'s edge features `(..., k, edgeDim)` (the server's `edge_features`). */
  edgeFeatures?: Tensor | null;
  /** camelCase or snake_case option names */
  options?: Record<string, OptionValue>;
}

/** An error from the server or the client: `code`, `message`, `field` as the server sent them. */
export class AttnkitError extends Error {
  constructor(message: string, init?: { code?: string; field?: string | null; status?: number; retryAfter?: number | null; cause?: unknown });
  code: string;
  field: string | null;
  /** HTTP status (0 for errors raised before a request was answered). */
  status: number;
  retryAfter: number | null;
}

/** A request's tensors; `edgeFeatures`: `EdgeFeaturedAttention`'s `(..., k, edgeDim)` edge features (the server's `edge_features`). */
type Tensors = { query: Tensor; keys?: Tensor | null; values?: Tensor | null; mask?: Mask | null; edgeFeatures?: Tensor | null };

/** Keyword-only inputs of some mechanisms: `edgeFeatures` of `EdgeFeaturedAttention` with `edgeDim > 0`
 * (`{data, shape}`, or flat: shaped `(...keys' leading axes, edgeDim)` from the keys). */
export interface Extras {
  edgeFeatures?: Tensor | null;
}

/** What computes for the spec's classes: an `AttnkitClient` (HTTP) or a `LocalEngine` (in process). */
export interface Backend {
  attention(mechanism: string, tensors: Tensors, options?: Record<string, OptionValue>): Promise<TensorResult>;
  scores(mechanism: string, tensors: Tensors, options?: Record<string, OptionValue>): Promise<TensorResult>;
}

/** Options every class accepts beside its own: any option of the mechanism, camelCase or snake_case, or an alias. */
export type AnyOptions = { [option: string]: OptionValue | undefined };

declare class Mechanism {
  readonly mechanism: string;
  readonly options: Record<string, unknown>;
  /** The backend that computes (an `AttnkitClient` or a `LocalEngine`). */
  readonly client: Backend;
  readonly backend: Backend;
  disposed: boolean;
  /** An option's value under any of its names, else attnkit's default. */
  opt(name: string): unknown;
  serverOptions(): Record<string, OptionValue>;
  /** The attention output, flat (as the spec's WASM classes return it). */
  forward(Q: Tensor, K?: Tensor | null, V?: Tensor | null, mask?: Mask | null, extras?: Extras): Promise<Float32Array>;
  forwardWithShape(Q: Tensor, K?: Tensor | null, V?: Tensor | null, mask?: Mask | null, extras?: Extras): Promise<TensorResult>;
  /**
   * The spec's `attentionScores(Q, K)`: the attention weights, flat (`heads * Lq * Lk` for one sequence,
   * rows of `Lk` summing to 1); `K` defaults to `Q`. Rejects with code `no_weights` for a mechanism
   * without weights and status 413 when they would exceed the server's `max_elements`.
   */
  attentionScores(Q: Tensor, K?: Tensor | null, mask?: Mask | null, extras?: Extras): Promise<Float32Array>;
  /** Like `attentionScores`, with the shape `(..., heads, Lq, Lk)`. */
  attentionScoresWithShape(Q: Tensor, K?: Tensor | null, mask?: Mask | null, extras?: Extras): Promise<TensorResult>;
  /** Median round-trip time of `forward` on random inputs. */
  benchmark(seqLen?: number, repeats?: number): Promise<BenchmarkResult>;
  dispose(): void;
}

export interface FlashAttentionOptions {
  heads?: number;
  dim?: number;
  blockSize?: number;
  causal?: boolean;
  dropout?: number;
  scale?: number | null;
  simd?: boolean;
  seed?: number | null;
  [option: string]: OptionValue | undefined;
}
export class FlashAttention extends Mechanism {
  constructor(options: FlashAttentionOptions, client: Backend);
}

export interface LinearAttentionOptions {
  dim: number;
  heads?: number;
  featureMap?: 'elu' | 'relu' | 'dpfp' | 'favor' | string;
  eps?: number;
  [option: string]: OptionValue | undefined;
}
export class LinearAttention extends Mechanism {
  constructor(options: LinearAttentionOptions, client: Backend);
  /** Always rejects (code `no_weights`): linear attention never forms the `Lq x Lk` weights. */
  attentionScores(Q: Tensor, K?: Tensor | null, mask?: Mask | null, extras?: Extras): Promise<never>;
  attentionScoresWithShape(Q: Tensor, K?: Tensor | null, mask?: Mask | null, extras?: Extras): Promise<never>;
}

export interface MHAOptions {
  modelDim: number;
  heads?: number;
  dropout?: number;
  bias?: boolean;
  kdim?: number | null;
  vdim?: number | null;
  causal?: boolean;
  seed?: number | null;
  [option: string]: OptionValue | undefined;
}
export class MultiHeadAttention extends Mechanism {
  constructor(options: MHAOptions, client: Backend);
}
export class SelfAttention extends MultiHeadAttention {
  constructor(options: Omit<MHAOptions, 'kdim' | 'vdim'>, client: Backend);
}

export interface CrossAttentionOptions {
  queryDim: number;
  keyDim: number;
  heads?: number;
  dropout?: number;
  bias?: boolean;
  causal?: boolean;
  seed?: number | null;
  [option: string]: OptionValue | undefined;
}
export class CrossAttention extends MultiHeadAttention {
  constructor(options: CrossAttentionOptions, client: Backend);
}

export interface HyperbolicAttentionOptions {
  dim: number;
  curvature?: number;
  temperature?: number;
  aggregation?: 'einstein' | 'frechet';
  [option: string]: OptionValue | undefined;
}
export class HyperbolicAttention extends Mechanism {
  constructor(options: HyperbolicAttentionOptions, client: Backend);
}

export class ScaledDotProduct extends Mechanism {
  constructor(options: { dim: number; scale?: number | null } & AnyOptions, client: Backend);
}

export interface LocalGlobalAttentionOptions extends AnyOptions {
  dim?: number;
  heads?: number;
  window?: number;
  globalTokens?: number;
  causal?: boolean;
  scale?: number | null;
}
/** Sliding-window attention with global tokens; flat `seqLen*heads*dim` arrays. */
export class LocalGlobalAttention extends Mechanism {
  constructor(options: LocalGlobalAttentionOptions, client: Backend);
}

export interface RowsOptions extends AnyOptions {
  dim?: number;
}
/** Product-space (Euclidean x hyperbolic) attention; inputs `n*dim`. */
export class MixedCurvatureAttention extends Mechanism {
  constructor(options: RowsOptions & { euclideanDim?: number | null; curvature?: number; temperature?: number }, client: Backend);
}
/** A mix of Euclidean and hyperbolic attention; inputs `n*dim`. */
export class DualSpaceAttention extends Mechanism {
  constructor(options: RowsOptions & { curvature?: number; mix?: number }, client: Backend);
}
/** Mixture of attention experts with top-k routing (not exportable to ONNX: server only). */
export class MoEAttention extends Mechanism {
  constructor(options: RowsOptions & { numExperts?: number; topK?: number; experts?: string }, client: Backend);
}
/** Graph attention with rotary position encodings; node features `n*dim`. */
export class GraphRoPEAttention extends Mechanism {
  constructor(options: RowsOptions & { base?: number; scaling?: number }, client: Backend);
}
/** GAT-style graph attention with optional edge features; node features `n*dim`. */
export class EdgeFeaturedAttention extends Mechanism {
  constructor(options: RowsOptions & { heads?: number; edgeDim?: number }, client: Backend);
}

/** The 13 classes by the registry name of their mechanism. */
export const MECHANISM_CLASSES: Record<string, new (options: any, client: Backend) => Mechanism>;
/** Give `backend` the spec's classes bound to it. */
export function bindClasses<T extends Backend>(backend: T): T;
/** attnkit's option aliases (generic name -> every spelling). */
export const OPTION_ALIASES: Record<string, string[]>;
/** The option of `optionNames` that `name` (camelCase, snake_case or an alias) means, or null. */
export function resolveOption(name: string, optionNames: Iterable<string>): string | null;
/** The `metadata_props` of an ONNX model file (`attnkit.mechanism`, `attnkit.options`, `attnkit.output`, ...). */
export function onnxMetadata(bytes: Uint8Array | ArrayBuffer): Record<string, string>;

type Bound<T extends abstract new (options: any, client: Backend) => any> = new (options: ConstructorParameters<T>[0]) => InstanceType<T>;

/** The spec's 13 classes, bound to a backend: `new backend.FlashAttention({heads, dim})`. */
export interface BoundClasses {
  FlashAttention: Bound<typeof FlashAttention>;
  MultiHeadAttention: Bound<typeof MultiHeadAttention>;
  CrossAttention: Bound<typeof CrossAttention>;
  SelfAttention: Bound<typeof SelfAttention>;
  LinearAttention: Bound<typeof LinearAttention>;
  LocalGlobalAttention: Bound<typeof LocalGlobalAttention>;
  HyperbolicAttention: Bound<typeof HyperbolicAttention>;
  MixedCurvatureAttention: Bound<typeof MixedCurvatureAttention>;
  DualSpaceAttention: Bound<typeof DualSpaceAttention>;
  MoEAttention: Bound<typeof MoEAttention>;
  GraphRoPEAttention: Bound<typeof GraphRoPEAttention>;
  EdgeFeaturedAttention: Bound<typeof EdgeFeaturedAttention>;
  ScaledDotProduct: Bound<typeof ScaledDotProduct>;
}

export interface LocalEngineOptions {
  /** A folder (Node), a base URL (browsers) of `*.onnx` files from `attnkit export`, or name -> path/URL/bytes. */
  models: string | URL | Record<string, string | Uint8Array | ArrayBuffer>;
  /** An ONNX Runtime module (default: import('onnxruntime-node') in Node, import('onnxruntime-web') in browsers). */
  ort?: unknown;
  /** Passed to `InferenceSession.create`. */
  sessionOptions?: Record<string, unknown>;
  /** ONNX Runtime threads (intra-op in Node, wasm threads in browsers). */
  numThreads?: number | null;
  /** Where onnxruntime-web finds its wasm files. */
  wasmPaths?: string | Record<string, string> | null;
}

export interface LocalModelInfo {
  name: string;
  output: 'forward' | 'weights';
  file: string;
  options: Record<string, unknown> | null;
  inputs: string[];
}

/** attnkit's mechanisms in this process, by ONNX Runtime, on models written by `attnkit export`. */
export interface LocalEngine extends BoundClasses {}
export class LocalEngine implements Backend {
  constructor(options: LocalEngineOptions);
  readonly models: LocalEngineOptions['models'];
  disposed: boolean;
  attention(mechanism: string, tensors: Tensors, options?: Record<string, OptionValue>): Promise<TensorResult>;
  scores(mechanism: string, tensors: Tensors, options?: Record<string, OptionValue>): Promise<TensorResult>;
  batch(items: BatchItem[]): Promise<Array<TensorResult | AttnkitError>>;
  mechanisms(): Promise<LocalModelInfo[]>;
  health(): Promise<{ status: string; version: string; runtime: 'onnxruntime-node' | 'onnxruntime-web' }>;
  dispose(): Promise<void>;
}

export interface AttnkitClient extends BoundClasses {}
export class AttnkitClient implements Backend {
  constructor(options?: ClientOptions);
  readonly baseUrl: string;
  apiKey: string | null;
  transport: 'binary' | 'json';
  timeoutMs: number;
  maxRetries: number;
  health(): Promise<{ status: string; version: string }>;
  mechanisms(): Promise<MechanismInfo[]>;
  attention(
    mechanism: string,
    tensors: Tensors,
    options?: Record<string, OptionValue>,
    init?: { transport?: 'binary' | 'json' },
  ): Promise<TensorResult>;
  /** `POST /v1/attention/{mechanism}/scores`: the attention weights, shape `(..., heads, Lq, Lk)`. */
  scores(
    mechanism: string,
    tensors: Tensors,
    options?: Record<string, OptionValue>,
    init?: { transport?: 'binary' | 'json' },
  ): Promise<TensorResult>;
  batch(items: BatchItem[]): Promise<Array<TensorResult | AttnkitError>>;
}

/** The spec's `createMask`: additive Float32Array, 0 = may attend, -Infinity = masked. */
export function createMask(type: 'causal' | 'padding' | 'block', seqLen: number, positions?: number[]): Float32Array;
/** The same mask as a Uint8Array of 0/1 (1 = may attend). */
export function createBoolMask(type: 'causal' | 'padding' | 'block', seqLen: number, positions?: number[]): Uint8Array;

export default AttnkitClient;
