"""Plain torch modules (no Lightning): the autoencoder and the multimodal story model."""
