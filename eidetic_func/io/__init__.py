"""Checkpoints: the sealed safetensors container, the tree codec and the state schema."""
