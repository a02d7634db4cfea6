// attnkit's option names and their aliases, shared by the HTTP client and the local engine.

/** attnkit's table of option aliases (`attnkit.mechanisms.registry.OPTION_ALIASES`; a test checks they agree). */
export const OPTION_ALIASES = {
  dim: ['model_dim', 'query_dim', 'dim', 'embed_dim', 'd_model', 'hidden_dim', 'hidden_size'],
  head_dim: ['dim', 'head_dim'],
  key_dim: ['key_dim', 'kdim'],
  value_dim: ['vdim', 'value_dim'],
  heads: ['heads', 'num_heads', 'n_heads', 'nhead', 'num_attention_heads'],
  dropout: ['dropout', 'dropout_p', 'attention_dropout'],
  causal: ['causal', 'is_causal'],
  block_size: ['block_size', 'block'],
  curvature: ['curvature', 'c'],
  feature_map: ['feature_map', 'kernel'],
  nb_features: ['nb_features', 'num_features', 'n_features'],
  window: ['window', 'window_size'],
  top_k: ['top_k', 'k'],
  simd: ['simd', 'use_simd'],
};

export function snakeCase(name) {
  return name.replace(/[A-Z]/g, (c) => '_' + c.toLowerCase());
}

/** The model's option that `name` (snake_case) means: itself, or an alias of attnkit's table; null if none. */
export function resolveOption(name, optionNames) {
  const names = optionNames instanceof Set ? optionNames : new Set(optionNames);
  const key = snakeCase(String(name)).replace(/-/g, '_');
  if (names.has(key)) return key;
  for (const [generic, spellings] of Object.entries(OPTION_ALIASES)) {
    if (key === generic || spellings.includes(key)) {
      const hit = spellings.find((n) => names.has(n));
      if (hit) return hit;
    }
  }
  return null;
}

