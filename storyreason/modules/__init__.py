"""LightningModules: stage 1 (autoencoder) and stage 2 (multimodal story model)."""
