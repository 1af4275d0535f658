"""Evaluation: log-probabilities (and later perplexity by position, generation)."""
