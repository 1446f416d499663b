"""Models as tailorfit sees them: the handle kinds passes exchange, loading (sub-networks included) and export
wrappers, datasets and their encoding, per-layer precision policies, the training loop, model cards."""
