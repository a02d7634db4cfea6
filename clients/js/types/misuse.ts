import AttnkitClient from '../src/index.js';
const client = new AttnkitClient({ baseUrl: 'x' });
const f = new client.FlashAttention({ heads: 'two' });
const n: number = f.forward(new Float32Array(1));
new client.MultiHeadAttention({ heads: 2 });
