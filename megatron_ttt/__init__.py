"""megatron-ttt: distributed pretraining of TTT language models."""

__version__ = "0.1.0"
