"""netshrink: shrink trained PyTorch networks without retraining."""

__version__ = "0.1.0"
