"""The TTT language model as megatron-core modules: config, presets, mixers, block, specs."""
