"""The helper that compares two trainings up to float rounding lets a few Adam-amplified
weights through and nothing more."""

from __future__ import annotations

import pytest
import torch
from rounding import assert_trained_alike


def _weights(**tensors: torch.Tensor) -> dict[str, torch.Tensor]:
    return dict(tensors)


def test_one_amplified_weight_in_a_thousand_passes_and_more_fails() -> None:
    base = torch.linspace(-0.01, 0.01, 2048)
    one = base.clone()
    one[17] += 1.25e-4  # as Adam left one weight on AVX2 (tests/test_dpo.py's packed rows)
    assert_trained_alike(_weights(w=base), _weights(w=one), rtol=1e-4, atol=1e-4)
    assert_trained_alike(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), rtol=1e9, atol=1e9)
    many = base.clone()
    many[:10] += 1.25e-4  # a real difference in the math moves many weights
    with pytest.raises(AssertionError, match="10 of 2048 weights differ"):
        assert_trained_alike(_weights(w=base), _weights(w=many), rtol=1e-4, atol=1e-4)
    far = base.clone()
    far[17] += 2e-3  # one weight, but beyond ten times atol
    with pytest.raises(AssertionError, match="beyond 10 x atol"):
        assert_trained_alike(_weights(w=base), _weights(w=far), rtol=1e-4, atol=1e-4)
    with pytest.raises(AssertionError, match="parameters differ"):
        assert_trained_alike(_weights(w=base), _weights(v=base), rtol=1e-4, atol=1e-4)
