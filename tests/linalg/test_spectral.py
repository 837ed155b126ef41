import numpy as np
import pytest
import torch

from netshrink.linalg import spectral_norm


def random_with_spectrum(rng, m, n, values):
    u, _ = np.linalg.qr(rng.standard_normal((m, len(values))))
    v, _ = np.linalg.qr(rng.standard_normal((n, len(values))))
    return (u * values) @ v.T


@pytest.mark.parametrize("shape", [(1, 1), (1, 40), (40, 1), (7, 5), (300, 300), (1000, 250), (250, 1000)])
def test_matches_lapack_on_gaussian_matrices(shape):
    a = np.random.default_rng(sum(shape)).standard_normal(shape)
    assert spectral_norm(torch.from_numpy(a)) == pytest.approx(np.linalg.norm(a, 2), rel=1e-12)


@pytest.mark.parametrize("values", [
    np.linspace(1.0, 0.9999, 300),            # clustered top: slow Krylov convergence
    np.r_[5.0, np.full(299, 4.999999)],        # a tiny gap
    np.r_[1.0, np.zeros(10)],                  # rank one
    np.logspace(0, -15, 200),                  # graded
])
def test_hard_spectra(values):
    a = random_with_spectrum(np.random.default_rng(1), 400, 350, values)
    assert spectral_norm(torch.from_numpy(a)) == pytest.approx(np.linalg.norm(a, 2), rel=1e-10)


def test_extreme_scales_zero_and_float32():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((30, 20))
    for scale in (1e-200, 1e200):
        assert spectral_norm(torch.from_numpy(a * scale)) == pytest.approx(np.linalg.norm(a, 2) * scale, rel=1e-12)
    assert spectral_norm(torch.zeros(4, 3)) == 0.0
    assert spectral_norm(torch.zeros(0, 3)) == 0.0
    a32 = torch.from_numpy(a).float()
    assert spectral_norm(a32) == pytest.approx(np.linalg.norm(a32.double().numpy(), 2), rel=1e-12)
