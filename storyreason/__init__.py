"""storyreason: predict the next frame and caption of a visual story."""

__version__ = "0.1.0"
