import AttnkitClient from '../src/index.js';
const client = new AttnkitClient({ baseUrl: 'x' });
const f = new client.FlashAttention({ heads: 'two' });
const n: number = f.forward(new Float32Array(1));
new client.MultiHeadAttention({ heads: 2 });
const w: Float32Array = f.attentionScores(new Float32Array(1));
f.attentionScores(new Float32Array(1), null, null, {}, null);
