"""netshrink: shrink trained PyTorch networks without retraining.

Remove whole neurons from a trained model and rewrite the layer that consumed them
from calibration activations, so the smaller dense model keeps the original's
function::

    import netshrink
    result = netshrink.compress(model, calibration_images, method="interpolative", tol=0.05)
    result.model        # a new, physically smaller nn.Module
    result.save("out")  # safetensors + JSON manifest
    small = netshrink.load("out", build_original_architecture())
"""

from .activation_cache import CacheOptions
from .api import Compression, LayerReport, compress, count_parameters, load, sweep

__version__ = "0.1.0"
__all__ = ["CacheOptions", "Compression", "LayerReport", "compress", "count_parameters", "load", "sweep"]
