"""Pure numerics on tensors: column-pivoted QR, interpolative decomposition, spectral norm,
ℓ2,1 group lasso and least squares from Gram statistics, the multi-task lasso of one layer.

Nothing here knows about ``nn.Module``; inputs are torch tensors (any device) or numpy
arrays, and results come back in the same kind.
"""

from netshrink.linalg.cpqr import CPQR, cpqr
from netshrink.linalg.group_lasso import (
    GroupLassoResult,
    duality_gap,
    group_labels,
    group_lasso,
    group_lasso_keep,
    group_lasso_path_order,
    lambda_max,
)
from netshrink.linalg.interpolative import InterpolativeDecomposition, interpolative_decomposition
from netshrink.linalg.lstsq import lstsq_from_gram, lstsq_from_gram_block
from netshrink.linalg.multitask_lasso import (
    MultitaskLassoResult,
    ProxAdamResult,
    multitask_lasso_fista,
    multitask_objective,
    multitask_objective_data,
    multitask_statistics,
    prox_adam,
    prox_adam_gram,
)
from netshrink.linalg.spectral import spectral_norm

__all__ = [
    "CPQR", "cpqr", "InterpolativeDecomposition", "interpolative_decomposition", "spectral_norm",
    "GroupLassoResult", "group_lasso", "group_lasso_keep", "group_lasso_path_order", "lambda_max", "duality_gap", "group_labels",
    "lstsq_from_gram", "lstsq_from_gram_block", "MultitaskLassoResult", "ProxAdamResult", "multitask_lasso_fista",
    "multitask_objective", "multitask_objective_data", "multitask_statistics", "prox_adam", "prox_adam_gram",
]
