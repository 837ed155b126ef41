"""Pure numerics on tensors: column-pivoted QR, interpolative decomposition, spectral norm.

Nothing here knows about ``nn.Module``; inputs are torch tensors (any device) or numpy
arrays, and results come back in the same kind.
"""

from netshrink.linalg.cpqr import CPQR, cpqr
from netshrink.linalg.interpolative import InterpolativeDecomposition, interpolative_decomposition
from netshrink.linalg.spectral import spectral_norm

__all__ = ["CPQR", "cpqr", "InterpolativeDecomposition", "interpolative_decomposition", "spectral_norm"]
