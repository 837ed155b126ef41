"""Memory-bounded helpers on large Gram matrices: the one-shot expressions' numbers, in blocks."""

import pytest
import torch

from netshrink.linalg import blocks, group_lasso, group_lasso_keep, lambda_max, lstsq_from_gram, spectral_norm


@pytest.fixture
def tiny_blocks(monkeypatch):
    """Blocks of 37 elements: every helper takes its chunked path on small matrices."""
    monkeypatch.setattr(blocks, "CHUNK_ELEMENTS", 37)


def _gram(d, samples=None, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(samples or d + 5, d, generator=generator, dtype=torch.float64).relu()
    gram = x.T @ x / len(x)
    return (gram + gram.T) / 2


def test_chunked_helpers_equal_the_one_shot_expressions(tiny_blocks):
    gram = _gram(40)
    columns = torch.tensor([0, 3, 4, 5, 17, 30, 39])
    left = torch.randn(7, len(columns), dtype=torch.float64)
    wide = torch.randn(5, 40, dtype=torch.float64)
    assert torch.equal(blocks.submatrix(gram, columns, columns), gram[columns][:, columns])
    assert torch.equal(blocks.submatrix(gram, columns[:3], columns), gram[columns[:3]][:, columns])
    for ours, expected in ((blocks.rows_product(left, gram, columns), left @ gram[columns]),
                           (blocks.block_product(left, gram, columns), left @ gram[columns][:, columns])):
        torch.testing.assert_close(ours, expected, rtol=0, atol=1e-14 * float(expected.abs().max()))
    assert blocks.inner(wide, 2 * wide) == pytest.approx(float((wide * 2 * wide).sum()), rel=1e-14)
    torch.testing.assert_close(blocks.column_sums(wide, square=True), (wide * wide).sum(dim=0), rtol=1e-14, atol=0)
    torch.testing.assert_close(blocks.column_sums(wide, square=False), wide.abs().sum(dim=0), rtol=1e-14, atol=0)
    skew = gram.clone()
    skew[31, 2] += 1e-3
    assert blocks.max_asymmetry(skew) == pytest.approx(1e-3, rel=1e-9)
    assert blocks.max_asymmetry(gram) == 0.0
    uneven = torch.randn(23, 23, dtype=torch.float64)
    assert torch.equal(blocks.symmetrize_(uneven.clone()), uneven + uneven.T)
    assert blocks.all_finite(gram)
    gram[39, 38] = float("nan")  # in the last block
    assert not blocks.all_finite(gram)


def test_contiguous_ranges_are_views():
    gram = _gram(12)
    span = torch.arange(3, 9)
    assert blocks.contiguous_range(span) == slice(3, 9)
    assert blocks.contiguous_range(torch.tensor([3, 5, 6])) is None
    assert blocks.contiguous_range(torch.tensor([-2, -1])) is None  # negative indices are not a slice
    view = blocks.principal_view(gram, span)
    assert view.data_ptr() == gram[3, 3].data_ptr() and torch.equal(view, gram[span][:, span])


def test_principal_block_reorders_in_place_yields_a_view_and_restores():
    gram = _gram(50)
    original = gram.clone()
    columns = torch.sort(torch.randperm(50, generator=torch.Generator().manual_seed(1))[:30]).values
    with blocks.principal_block(gram, columns) as block:
        assert block.untyped_storage().data_ptr() == gram.untyped_storage().data_ptr()  # no copy
        assert torch.equal(block, original[columns][:, columns])  # bit for bit
    assert torch.equal(gram, original)


def test_principal_block_restores_the_order_after_an_error():
    gram = _gram(40)
    original = gram.clone()
    with pytest.raises(RuntimeError, match="inside"):
        with blocks.principal_block(gram, torch.arange(0, 40, 2)):
            raise RuntimeError("inside")
    assert torch.equal(gram, original)


def test_principal_block_gathers_a_small_block_and_works_on_inference_tensors():
    with torch.inference_mode():
        gram = _gram(40)
    original = gram.clone()
    small = torch.tensor([1, 7, 20])
    with blocks.principal_block(gram, small) as block:
        assert block.untyped_storage().data_ptr() != gram.untyped_storage().data_ptr()
        assert torch.equal(block, original[small][:, small])
    large = torch.arange(1, 40, 2)
    with blocks.principal_block(gram, large) as block:  # reordered in place, outside inference mode
        assert torch.equal(block, original[large][:, large])
    assert torch.equal(gram, original)


def _problem(seed=0, d=60, out=20, groups=3):
    generator = torch.Generator().manual_seed(seed)
    x = (torch.randn(200, d, generator=generator, dtype=torch.float64)
         @ torch.randn(d, d, generator=generator, dtype=torch.float64)).relu()
    y = x @ torch.randn(d, out, generator=generator, dtype=torch.float64)
    gram = x.T @ x / len(x)
    return (gram + gram.T) / 2, x.T @ y / len(x), float((y * y).sum() / len(x)), groups


@pytest.mark.parametrize("solver", ["fista", "altmin"])
def test_solvers_on_reordered_working_sets_and_in_blocks_give_the_same_solution(monkeypatch, solver):
    gram, cross, energy, groups = _problem()
    lam = 0.05 * lambda_max(cross, groups)
    reference = group_lasso(gram, cross, lam, groups, solver=solver, tol=1e-12, energy=energy)
    kept = group_lasso_keep(gram, cross, 8, groups, solver=solver, tol=1e-10, energy=energy)
    original = gram.clone()
    monkeypatch.setattr(blocks, "_GATHER_FRACTION", 0.0)  # every working set reordered in place
    monkeypatch.setattr(blocks, "CHUNK_ELEMENTS", 97)  # every product in blocks
    reorders = []
    permute = blocks._permute
    monkeypatch.setattr(blocks, "_permute", lambda matrix, order: reorders.append(len(order)) or permute(matrix, order))
    ours = group_lasso(gram, cross, lam, groups, solver=solver, tol=1e-12, energy=energy)
    ours_kept = group_lasso_keep(gram, cross, 8, groups, solver=solver, tol=1e-10, energy=energy)
    assert reorders and all(size == 60 for size in reorders)
    assert torch.equal(gram, original)
    assert torch.equal(ours.active, reference.active) and torch.equal(ours_kept.active, kept.active)
    torch.testing.assert_close(ours.M, reference.M, rtol=0, atol=1e-8 * float(reference.M.abs().max()))
    assert ours.objective == pytest.approx(reference.objective, rel=1e-11)
    assert ours_kept.objective == pytest.approx(kept.objective, rel=1e-9)


def test_least_squares_and_spectral_norm_in_blocks(tiny_blocks):
    gram, cross, _, _ = _problem(1)
    singular = _gram(30, samples=12)  # rank 12: the minimum-norm path
    columns = torch.tensor([0, 2, 3, 9, 20, 29])
    for matrix, rhs in ((gram[:30, :30], cross[:30]), (singular, cross[:30])):
        block = matrix[columns][:, columns].clone()
        expected = torch.linalg.lstsq(block, rhs[columns], driver="gelsd").solution.T if matrix is singular \
            else torch.linalg.solve(block, rhs[columns]).T
        torch.testing.assert_close(lstsq_from_gram(matrix, rhs, columns), expected, rtol=1e-9, atol=1e-9)
    assert spectral_norm(gram) == pytest.approx(float(torch.linalg.matrix_norm(gram, 2)), rel=1e-12)
