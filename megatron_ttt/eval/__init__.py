"""Evaluation: `mttt eval logprobs` (token ids in, log-probabilities out), `mttt eval perplexity`
(loss and perplexity by token position at several contexts, CSV and plot) and `mttt generate`
(prefill, then constant-memory decoding), on any model source at any TP size."""
