"""Tests for mixed precision by hardware (training/precision.py) and its use by the trainers.

The CPU's flags are simulated, so an AVX2-only CPU and one with native bf16 are both tested
on any machine; the trainers run a tiny model for two updates.
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"  # before transformers reads it: nothing may download

from pathlib import Path

import pytest
import torch
from transformers import PreTrainedTokenizerBase

from training import precision
from training.config import ModelConfig, TrainingConfig
from training.dpo import PreferenceExample, train_dpo
from training.model import build_tiny_llama
from training.precision import Precision, cpu_flags, native_bf16, resolve_bf16
from training.sft import train_sft
from training.tokenizer import build_tokenizer

CPU = torch.device("cpu")
AVX2_ONLY = frozenset({"fpu", "sse4_2", "avx", "avx2", "fma"})
AVX512_BF16 = AVX2_ONLY | {"avx512f", "avx512_bf16"}
TINY = ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, max_seq_len=64)
EXAMPLES = [
    (f"Question: {a} + {b}?\nSolution:\n", f"{a + b}\n") for a in range(4) for b in range(4)
]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerBase:
    return build_tokenizer([p + c for p, c in EXAMPLES])


def test_avx2_only_cpu_trains_in_float32() -> None:
    choice = native_bf16(CPU, AVX2_ONLY)
    assert choice.bf16 is False
    assert "lacks avx512_bf16 and amx_bf16" in str(choice)
    assert str(choice).startswith("bf16 autocast: off (")


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_native_bf16_cpu_trains_in_bf16(flag: str) -> None:
    choice = native_bf16(CPU, AVX2_ONLY | {flag})
    assert choice.bf16 is True
    assert str(choice).startswith(f"bf16 autocast: on (CPU has {flag}")


def test_explicit_setting_wins_over_detection() -> None:
    assert resolve_bf16(True, CPU, AVX2_ONLY) == Precision(True, "training.bf16 is true")
    assert resolve_bf16(False, CPU, AVX512_BF16) == Precision(False, "training.bf16 is false")
    assert resolve_bf16(None, CPU, AVX2_ONLY).bf16 is False
    assert resolve_bf16(None, CPU, AVX512_BF16).bf16 is True
    assert TrainingConfig().bf16 is None  # detection is the default


def test_cpu_flags_come_from_proc_cpuinfo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu avx2 avx512_bf16\n\n"
        "processor\t: 1\nflags\t\t: fpu avx2 avx512_bf16\n"
    )
    monkeypatch.setattr(precision, "CPUINFO", cpuinfo)
    assert cpu_flags() == {"fpu", "avx2", "avx512_bf16"}
    assert resolve_bf16(None, CPU).bf16 is True
    # Unreadable (not Linux): no native bf16 is assumed.
    monkeypatch.setattr(precision, "CPUINFO", tmp_path / "missing")
    assert cpu_flags() is None
    assert resolve_bf16(None, CPU) == Precision(
        False, "CPU flags unreadable, so no native bf16 assumed"
    )


def test_other_devices(monkeypatch: pytest.MonkeyPatch) -> None:
    for supported in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda supported=supported: supported)
        assert native_bf16(torch.device("cuda")).bf16 is supported
    assert native_bf16(torch.device("mps")).bf16 is False


def _autocast_states(model: torch.nn.Module) -> list[bool]:
    """Whether bf16 autocast was on at each of ``model``'s forward passes, recorded as they run."""
    states: list[bool] = []

    def record(module, args, kwargs) -> None:
        states.append(
            torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        )

    model.register_forward_pre_hook(record, with_kwargs=True)
    return states


@pytest.mark.parametrize(
    ("flags", "setting", "expected", "reason"),
    [
        (AVX2_ONLY, None, False, "CPU lacks avx512_bf16"),
        (AVX512_BF16, None, True, "CPU has avx512_bf16"),
        (AVX2_ONLY, True, True, "training.bf16 is true"),
        (AVX512_BF16, False, False, "training.bf16 is false"),
    ],
)
def test_trainers_run_in_the_resolved_precision(
    tokenizer: PreTrainedTokenizerBase,
    monkeypatch: pytest.MonkeyPatch,
    flags: frozenset[str],
    setting: bool | None,
    expected: bool,
    reason: str,
) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    config = TrainingConfig(batch_size=8, bf16=setting)
    switch = "on" if expected else "off"

    model = build_tiny_llama(TINY, tokenizer, seed=0)
    states = _autocast_states(model)
    lines: list[str] = []
    options = {"config": config, "seed": 0, "max_seq_len": 64, "max_steps": 2, "log": lines.append}
    train_sft(model, tokenizer, EXAMPLES, **options)
    assert states and set(states) == {expected}
    assert f"bf16 autocast: {switch} ({reason}" in lines[0]

    pairs = [PreferenceExample(p, c, "0\n") for p, c in EXAMPLES[1:]]
    model = build_tiny_llama(TINY, tokenizer, seed=0)
    states = _autocast_states(model)  # the reference pass and the training passes
    lines.clear()
    train_dpo(
        model, tokenizer, pairs, beta=0.1, learning_rate=1e-3, epochs=1, batch_size=8, **options
    )
    assert states and set(states) == {expected}
    assert f"bf16 autocast: {switch} ({reason}" in lines[1]
