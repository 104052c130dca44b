"""Neural network components of goae (one module per model family)."""
