// Type declarations of `attnkit-client/local` (the in-process engine alone).
export { LocalEngine, OPTION_ALIASES, resolveOption, onnxMetadata } from './index.js';
export { LocalEngine as default } from './index.js';
