"""How :mod:`training.generation.vllm_replicas` shares prompts and devices out (the engines
themselves are tested in .venv-vllm: tests/test_vllm_backend.py)."""

from __future__ import annotations

import pytest
import torch

from training.generation.vllm_replicas import device_slices, shares


@pytest.mark.parametrize(("n", "replicas"), [(0, 2), (1, 3), (7, 2), (8, 4), (10, 3)])
def test_shares_are_contiguous_and_within_one(n: int, replicas: int) -> None:
    parts = shares(n, replicas)
    assert len(parts) == replicas
    assert [i for part in parts for i in part] == list(range(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_each_replica_gets_its_own_gpus(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert device_slices(4, 2) == ["0,1", "2,3", "4,5", "6,7"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,5,7")
    assert device_slices(2, 2) == ["2,3", "5,7"]
    with pytest.raises(ValueError, match="execution.data_parallel_size 3 x"):
        device_slices(3, 2)


def test_without_a_gpu_replicas_get_no_devices(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert device_slices(2, 1) == [None, None]
