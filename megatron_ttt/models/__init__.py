"""The TTT language model as megatron-core modules: what it is (config, presets), its layers
(mixers, block, specs), building and initializing it (build.py) from the parameter table
(parameter_table.py; conversion by it: parameters.py), scoring, inference caches and the dense
reference twin."""
