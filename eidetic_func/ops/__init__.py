"""Pure operations on the state: task masks, forward, freezing, pruning, bridging, the
task lifecycle (finish, recycle, revisit), capacity and growth."""
