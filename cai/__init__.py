"""cai: Constitutional AI from a principle file to training data and trained models."""

__version__ = "0.1.0"
