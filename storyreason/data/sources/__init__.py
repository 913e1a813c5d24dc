"""Story sources: each turns its input into train/val/test `StorySplit`s (through the frame cache)."""
