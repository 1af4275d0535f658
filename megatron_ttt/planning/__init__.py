"""`mttt plan`: per-GPU memory, FLOPs, communication and step time of a layout, from formulas.

hardware.py (GPU datasheet values, the stated assumptions), layout.py (the parallel layout),
activations.py, lact_activations.py (LaCT's op) and memory.py (bytes per GPU), flops.py, comm.py,
estimate.py (step time, MFU), search.py (the best layouts), measure.py (measured peaks of real
steps, for validation), cli.py. docs/planning.md derives every formula.
"""
