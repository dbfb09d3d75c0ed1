"""Comparing two trainings that run the same math in a different order (chunks, packed rows,
micro-batches, scored once or twice): equal up to float rounding, where rounding depends on the
CPU's kernels (AVX2 and AVX-512 sum in different orders)."""

from __future__ import annotations

from collections.abc import Mapping

import torch

# Adam divides each update by the running scale of the weight's own gradient, so where that
# gradient is near 0 a rounding difference in it can move the weight by a sizeable part of a
# step. torch.testing.assert_close has no allowance for a few such weights, so this helper adds
# one: at most one weight in a thousand (at least one per tensor) may miss the tolerance, and
# by at most OUTLIER_FACTOR times atol. A real difference in the math (a mask, a chunk's edge,
# a token left out) moves most weights of a tensor, and the losses the tests compare besides.
OUTLIER_SHARE = 1e-3
OUTLIER_FACTOR = 10.0


Weights = torch.nn.Module | Mapping[str, torch.Tensor]


def _named(weights: Weights) -> dict[str, torch.Tensor]:
    if isinstance(weights, torch.nn.Module):
        return {name: p.detach() for name, p in weights.named_parameters()}
    return dict(weights)


def assert_trained_alike(a: Weights, b: Weights, *, rtol: float, atol: float) -> None:
    """Every parameter of ``a`` (a model, or a name-to-tensor mapping) equals ``b``'s within
    ``rtol``/``atol``, but for a few weights whose near-zero gradients Adam amplified (see
    above)."""
    first, second = _named(a), _named(b)
    assert first.keys() == second.keys(), f"parameters differ: {first.keys() ^ second.keys()}"
    for name, x in first.items():
        y = second[name]
        assert x.shape == y.shape, f"{name}: shapes {tuple(x.shape)} and {tuple(y.shape)}"
        diff = (x - y).abs()
        missed = diff > atol + rtol * y.abs()
        allowed = max(1, int(OUTLIER_SHARE * x.numel()))
        count = int(missed.sum())
        assert count <= allowed, (
            f"{name}: {count} of {x.numel()} weights differ beyond rtol={rtol}, atol={atol} "
            f"(at most {allowed} may, by Adam's rounding); largest difference {diff.max():.3g}"
        )
        if count:
            worst = float(diff[missed].max())
            assert worst <= OUTLIER_FACTOR * atol, (
                f"{name}: a weight differs by {worst:.3g}, beyond {OUTLIER_FACTOR:g} x atol={atol}"
            )
