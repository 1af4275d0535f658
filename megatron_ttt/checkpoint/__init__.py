"""Checkpoint formats: model directories, the run directory layout, the layout-free part of
training checkpoints, reference-format files, and `mttt convert` between them."""
