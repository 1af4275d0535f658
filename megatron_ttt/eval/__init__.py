"""Evaluation: `mttt eval logprobs` (token ids in, log-probabilities out), `mttt eval perplexity`
(loss and perplexity by token position at several contexts, CSV and plot), `mttt eval harness`
(lm-evaluation-harness tasks), `mttt eval long-context` (passkey and needle retrieval) and
`mttt generate` (prefill, then constant-memory decoding), on any model source at any TP size,
each loaded by `loading.py`."""
