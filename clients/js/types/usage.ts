import AttnkitClient, { AttnkitError, createMask, createBoolMask, FlashAttention, type TensorResult } from '../src/index.js';

async function main(): Promise<void> {
  const client = new AttnkitClient({ baseUrl: 'http://127.0.0.1:8000', apiKey: 'k' });
  const flash = new client.FlashAttention({ heads: 2, dim: 4, blockSize: 8, causal: true });
  const out: Float32Array = await flash.forward(new Float32Array(8), null, null, createMask('causal', 1));
  const f2 = new FlashAttention({ heads: 2 }, client);
  const r: TensorResult = await f2.forwardWithShape({ data: new Float32Array(8), shape: [1, 2, 4] });
  const mha = new client.MultiHeadAttention({ modelDim: 8, heads: 2 });
  await mha.forward([1, 2, 3]);
  const cross = new client.CrossAttention({ queryDim: 4, keyDim: 6 });
  const lin = new client.LinearAttention({ dim: 4, featureMap: 'elu' });
  const hyp = new client.HyperbolicAttention({ dim: 4, curvature: 1 });
  const m: Uint8Array = createBoolMask('block', 4, [2]);
  const res = await client.batch([{ mechanism: 'flash', query: new Float32Array(8), options: { heads: 2, dim: 4 } }]);
  for (const x of res) if (x instanceof AttnkitError) console.log(x.code, x.field, x.status);
  const w: Float32Array = await flash.attentionScores(new Float32Array(8), new Float32Array(8), createBoolMask('causal', 1));
  const ws: TensorResult = await mha.attentionScoresWithShape([1, 2, 3]);
  const wc: Float32Array = await cross.attentionScores(new Float32Array(4), new Float32Array(6));
  const wh: Float32Array = await hyp.attentionScores(new Float32Array(4));
  const sdp = new client.ScaledDotProduct({ dim: 4 });
  const wn: Float32Array = await sdp.attentionScores(new Float32Array(4), new Float32Array(8));
  const raw: TensorResult = await client.scores('flash', { query: new Float32Array(8) }, { heads: 2, dim: 4 }, { transport: 'json' });
  const withScores: boolean = (await client.mechanisms())[0].has_scores;
  console.log(w, ws.shape, wc, wh, wn, raw.shape, withScores);
  const b = await flash.benchmark(16);
  console.log(out.length, r.shape, cross, lin, hyp, m, b.latencyMs, (await client.mechanisms())[0].options[0].type);
}
main();

import { LocalEngine, DEFAULT_BASE_URL, LocalGlobalAttention, type Backend, type LocalModelInfo } from '../src/index.js';

async function local(): Promise<void> {
  // the same classes, computed in process: only the constructor changes
  const engine = new LocalEngine({ models: 'models' });
  const flash = new engine.FlashAttention({ heads: 2, dim: 4, numHeads: 2 });
  const out: Float32Array = await flash.forward(new Float32Array(8));
  const w: TensorResult = await flash.attentionScoresWithShape(new Float32Array(8));
  const lg = new LocalGlobalAttention({ dim: 4, heads: 2, globalTokens: 1, window: 2 }, engine);
  const be: Backend = lg.backend;
  const all = [engine.MoEAttention, engine.DualSpaceAttention, engine.MixedCurvatureAttention, engine.GraphRoPEAttention,
    engine.EdgeFeaturedAttention, engine.SelfAttention, engine.CrossAttention, engine.ScaledDotProduct, engine.LinearAttention,
    engine.HyperbolicAttention, engine.MultiHeadAttention, engine.LocalGlobalAttention];
  const gat = new engine.EdgeFeaturedAttention({ dim: 4, heads: 2, edgeDim: 3 });
  const ge: Float32Array = await gat.forward({ data: new Float32Array(8), shape: [2, 4] }, { data: new Float32Array(8), shape: [2, 4] }, null, null,
    { edgeFeatures: new Float32Array(6) });
  const gw: TensorResult = await engine.scores('edge_featured', { query: new Float32Array(4), edgeFeatures: { data: new Float32Array(3), shape: [1, 3] } });
  console.log(ge, gw.shape);
  const models: LocalModelInfo[] = await engine.mechanisms();
  const h = await engine.health();
  await engine.dispose();
  const c = new AttnkitClient();
  const g = new c.LocalGlobalAttention({ globalTokens: 1 });
  console.log(out, w.shape, be, all.length, models, h.runtime, DEFAULT_BASE_URL, g.options);
}
local();

import LocalOnly, { onnxMetadata, resolveOption } from '../src/local.js';
const e2: LocalOnly = new LocalOnly({ models: { 'flash.onnx': new Uint8Array(0) }, numThreads: 2 });
const meta: Record<string, string> = onnxMetadata(new Uint8Array(0));
const opt: string | null = resolveOption('numHeads', ['heads']);
console.log(e2, meta, opt);
