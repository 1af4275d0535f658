"""Checkpoints: model directories, the reference format, conversions."""
