"""Stage 1 on a CUDA device: what the CPU tests cannot show (bf16 + SDPA kernels of the GPU,
compiled forward there, training in bf16 there).

Marker ``gpu``: deselected by default; ``pytest -m gpu tests/test_gpu.py`` on a machine with
a GPU (``bench/gpu_stage1.sh`` runs them before its benchmark). ``GPU_TEST_DEVICE=cpu`` runs
the same checks on the CPU, in bf16 where they would use it on the GPU, to check the tests
themselves.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from stage1_ensemble import decode_spans
from stage1_ensemble.config import InferenceConfig
from tests.tiny_models import LONG_AND_SHORT, SENTENCES, runner_probs, tiny_bert_encoder

DEVICE = os.environ.get("GPU_TEST_DEVICE", "cuda")
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(DEVICE.startswith("cuda") and not torch.cuda.is_available(),
                                 reason="no CUDA device")]
WINDOWS = dict(max_length=64, stride=8, batch_size=3)  # several windows, batches, widths


@pytest.fixture(scope="module")
def member(tmp_path_factory):
    """A random tiny BERT member (its probabilities lie near 0.5: every digit counts)."""
    return tiny_bert_encoder(tmp_path_factory.mktemp("gpu") / "member")


def test_fp32_on_the_device_equals_the_cpu(member):
    cpu = runner_probs(member, InferenceConfig(device="cpu", bf16=False, **WINDOWS),
                       LONG_AND_SHORT)
    here = runner_probs(member, InferenceConfig(device=DEVICE, bf16=False, **WINDOWS),
                        LONG_AND_SHORT)
    assert cpu.shape == here.shape
    assert np.abs(cpu - here).max() < 1e-4


def test_bf16_by_default_on_the_device_stays_near_fp32(member):
    config = InferenceConfig(device=DEVICE, **WINDOWS)
    if DEVICE == "cpu":
        config = config.model_copy(update={"bf16": True})  # what a GPU does by default
    cpu = runner_probs(member, InferenceConfig(device="cpu", bf16=False, **WINDOWS),
                       LONG_AND_SHORT)
    here = runner_probs(member, config, LONG_AND_SHORT)
    assert not np.array_equal(cpu, here)  # bf16 did run
    assert np.abs(cpu - here).max() < 0.02
    assert (here[cpu == 0] == 0).all()  # padding stays empty


def test_compiled_forward_on_the_device_equals_eager(member):
    base = dict(device=DEVICE, bf16=True, width_multiple=16, **WINDOWS)
    eager = runner_probs(member, InferenceConfig(**base), LONG_AND_SHORT)
    compiled = runner_probs(member, InferenceConfig(**base, compile=True), LONG_AND_SHORT)
    assert np.abs(eager - compiled).max() < 0.02


def test_a_member_trained_on_the_device_gives_the_gold_spans(tmp_path):
    """Training (HF Trainer, bf16 on a GPU) and inference there, end to end."""
    try:
        import datasets  # noqa: F401  (not on every GPU machine)
    except Exception as exc:  # an ImportError, or a version clash inside it
        pytest.skip(f"datasets does not import here: {exc}")
    from pipeline.training import train_ensemble
    from stage1_ensemble.config import TrainConfig
    from stage1_ensemble.ensemble import Ensemble
    from tests.test_stage1_models import GOLD, two_docs

    encoder = tiny_bert_encoder(tmp_path / "encoder")
    config = TrainConfig(learning_rate=3e-3, warmup_steps=0, max_steps=120, batch_size=2,
                         logging_steps=1000, max_length=64, stride=8,
                         bf16=True if DEVICE == "cpu" else None)
    train_ensemble(two_docs(), out=tmp_path / "ens", encoders=[str(encoder)],
                   classes=["DISEASE"], config=config)
    for inference in (InferenceConfig(device=DEVICE, bf16=True),
                      InferenceConfig(device="cpu", bf16=False)):
        probs = Ensemble.load(tmp_path / "ens", inference).char_probs(SENTENCES, ["DISEASE"])
        spans = [[t[s:e] for s, e, _ in decode_spans(t, p["DISEASE"], 0.5)]
                 for t, p in zip(SENTENCES, probs)]
        assert spans == [GOLD[0], GOLD[1]], inference
