// Type declarations of the attnkit JavaScript client.

export type Tensor = Float32Array | Float64Array | number[] | { data: Float32Array | Float64Array | Uint8Array | number[]; shape: number[] };
export type Mask = Float32Array | Uint8Array | { data: Float32Array | Uint8Array; shape: number[] };
export type OptionValue = number | boolean | string | null | Array<number | boolean | string | null>;

export interface ClientOptions {
  /** Server address, e.g. `http://127.0.0.1:8000`. */
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

declare class RemoteMechanism {
  readonly mechanism: string;
  readonly options: Record<string, unknown>;
  readonly client: AttnkitClient;
  disposed: boolean;
  serverOptions(): Record<string, OptionValue>;
  /** The attention output, flat (as the spec's WASM classes return it). */
  forward(Q: Tensor, K?: Tensor | null, V?: Tensor | null, mask?: Mask | null): Promise<Float32Array>;
  forwardWithShape(Q: Tensor, K?: Tensor | null, V?: Tensor | null, mask?: Mask | null): Promise<TensorResult>;
  /**
   * The spec's `attentionScores(Q, K)`: the attention weights, flat (`heads * Lq * Lk` for one sequence,
   * rows of `Lk` summing to 1); `K` defaults to `Q`. Rejects with code `no_weights` for a mechanism
   * without weights and status 413 when they would exceed the server's `max_elements`.
   */
  attentionScores(Q: Tensor, K?: Tensor | null, mask?: Mask | null): Promise<Float32Array>;
  /** Like `attentionScores`, with the shape `(..., heads, Lq, Lk)`. */
  attentionScoresWithShape(Q: Tensor, K?: Tensor | null, mask?: Mask | null): Promise<TensorResult>;
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
}
export class FlashAttention extends RemoteMechanism {
  constructor(options: FlashAttentionOptions, client: AttnkitClient);
}

export interface LinearAttentionOptions {
  dim: number;
  heads?: number;
  featureMap?: 'elu' | 'relu' | 'dpfp' | 'favor' | string;
  eps?: number;
  [option: string]: OptionValue | undefined;
}
export class LinearAttention extends FlashAttention {
  constructor(options: LinearAttentionOptions, client: AttnkitClient);
  /** Always rejects (code `no_weights`): linear attention never forms the `Lq x Lk` weights. */
  attentionScores(Q: Tensor, K?: Tensor | null, mask?: Mask | null): Promise<never>;
  attentionScoresWithShape(Q: Tensor, K?: Tensor | null, mask?: Mask | null): Promise<never>;
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
}
export class MultiHeadAttention extends RemoteMechanism {
  constructor(options: MHAOptions, client: AttnkitClient);
}
export class SelfAttention extends MultiHeadAttention {
  constructor(options: Omit<MHAOptions, 'kdim' | 'vdim'>, client: AttnkitClient);
}

export interface CrossAttentionOptions {
  queryDim: number;
  keyDim: number;
  heads?: number;
  dropout?: number;
  bias?: boolean;
  causal?: boolean;
  seed?: number | null;
}
export class CrossAttention extends MultiHeadAttention {
  constructor(options: CrossAttentionOptions, client: AttnkitClient);
}

export interface HyperbolicAttentionOptions {
  dim: number;
  curvature?: number;
  temperature?: number;
  aggregation?: 'einstein' | 'frechet';
  [option: string]: OptionValue | undefined;
}
export class HyperbolicAttention extends RemoteMechanism {
  constructor(options: HyperbolicAttentionOptions, client: AttnkitClient);
}

export class ScaledDotProduct extends RemoteMechanism {
  constructor(options: { dim: number; scale?: number | null }, client: AttnkitClient);
}

type Bound<T extends abstract new (options: any, client: AttnkitClient) => any> = new (options: ConstructorParameters<T>[0]) => InstanceType<T>;

export class AttnkitClient {
  constructor(options?: ClientOptions);
  readonly baseUrl: string;
  apiKey: string | null;
  transport: 'binary' | 'json';
  timeoutMs: number;
  maxRetries: number;
  FlashAttention: Bound<typeof FlashAttention>;
  MultiHeadAttention: Bound<typeof MultiHeadAttention>;
  CrossAttention: Bound<typeof CrossAttention>;
  SelfAttention: Bound<typeof SelfAttention>;
  LinearAttention: Bound<typeof LinearAttention>;
  HyperbolicAttention: Bound<typeof HyperbolicAttention>;
  ScaledDotProduct: Bound<typeof ScaledDotProduct>;
  health(): Promise<{ status: string; version: string }>;
  mechanisms(): Promise<MechanismInfo[]>;
  attention(
    mechanism: string,
    tensors: { query: Tensor; keys?: Tensor | null; values?: Tensor | null; mask?: Mask | null },
    options?: Record<string, OptionValue>,
    init?: { transport?: 'binary' | 'json' },
  ): Promise<TensorResult>;
  /** `POST /v1/attention/{mechanism}/scores`: the attention weights, shape `(..., heads, Lq, Lk)`. */
  scores(
    mechanism: string,
    tensors: { query: Tensor; keys?: Tensor | null; values?: Tensor | null; mask?: Mask | null },
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
