"""Training: the one training loop, where and in which precision it runs, and layer-to-layer losses."""
