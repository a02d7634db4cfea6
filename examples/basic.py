"""attnkit SDK tour: builder, presets, automatic selection, config files and a transformer block.

Run: python examples/basic.py
"""

from __future__ import annotations

import numpy as np

from attnkit import AttentionBuilder, AttentionConfig, AttentionType, Pipeline
from attnkit.sdk import FeedForward, for_sequences, from_model_name, multi_head

rng = np.random.default_rng(0)

# 1. The fluent builder: every setting reaches the built object.
flash = AttentionBuilder().type(AttentionType.FLASH).heads(4).dim(32).causal().block_size(64).build()
q = rng.standard_normal((128, 4, 32)).astype(np.float32)  # (L, heads, head width)
out = flash.forward(q)  # self-attention: keys and values default to the query
print(f"flash: {flash!r}\n  causal={flash.causal}, output {out.shape} {out.dtype}")

# 2. The spec's free functions return builders too.
mha = multi_head(256, 8).dropout(0.1).seed(0).build()
x = rng.standard_normal((16, 256)).astype(np.float32)  # (L, model width)
print(f"multi_head: model_dim={mha.model_dim}, heads={mha.heads}, output {mha.forward(x).shape}")

# 3. Presets for well-known models take the model width.
gpt2 = from_model_name("gpt2-medium", 1024).build()
print(f"gpt2 preset: heads={gpt2.heads}, causal={gpt2.causal}, dropout={gpt2.dropout}")

# 4. Automatic selection: exact attention while it fits, linear attention beyond; explain() says why.
for max_len in (2048, 65536):
    builder = for_sequences(512, max_len)
    print(f"\nfor_sequences(512, {max_len}):\n{builder.explain()}")

# 5. A config round-trips through TOML (writing TOML needs tomli-w, in the cli extra).
config = AttentionBuilder().type("linear").dim(64).heads(8).feature_map("favor").seed(1).config
text = config.to_toml()
print(f"\nconfig as TOML:\n{text}")
assert AttentionConfig.from_toml(text) == config
print(f"built from TOML: {AttentionConfig.from_toml(text).build()!r}")

# 6. A pre-norm transformer block (attention and feed-forward sub-blocks), run for real.
block = multi_head(256, 8).seed(2).build()
pipe = Pipeline(seed=0).add_pre_norm_block(block, feed_forward=FeedForward(256, seed=3), dropout=0.1)
y = pipe.run(x)
print(f"\npipeline: {pipe!r}\n  in {x.shape} -> out {y.shape}, finite={bool(np.isfinite(y).all())}")
