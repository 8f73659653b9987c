"""The core: the immutable state, its pytree registration, types, errors, validation and
the prune topology (plain data). Imports nothing else of the package."""
