"""Network building blocks: Task BatchNorm, multi-head wrappers, grown layers, and the
tracer that derives a topology (and checks that a user network can be kept)."""
