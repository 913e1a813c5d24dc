"""Story sources, the frame cache, captions and the LightningDataModule."""
