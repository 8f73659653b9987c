"""Training: one optimizer step that keeps frozen entries bit-identical, the task loop, its
settings, data parallelism and evaluation metrics."""
