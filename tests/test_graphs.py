"""The CUDA-graph sampler's contract; its CUDA path runs in benchmarks/policy_speed.py."""

import pytest
import torch

from ript.models.cfg_pi0 import CFGPI0ForConditionalGeneration
from ript.models.graphs import GraphedSampler
from ript.models.presets import build_config


def tiny_model_and_inputs(batch: int):
    model = CFGPI0ForConditionalGeneration(build_config("tiny", chunk_size=4)).eval()
    ids = torch.randint(3, 1000, (batch, 5))
    x = dict(
        state=torch.randn(batch, 32),
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        noise=torch.randn(batch, 4, 32),
    )
    return model, x


def test_off_cuda_it_is_the_model_call():
    model, x = tiny_model_and_inputs(2)
    sampler = GraphedSampler(model)
    got = sampler(cfg_scale=2.0, num_steps=3, pixel_values=None, **x)
    want = model.sample_actions(cfg_scale=2.0, num_steps=3, **x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert sampler.num_graphs == 0
    with pytest.raises(ValueError, match="explicit noise"):
        sampler(cfg_scale=1.0, num_steps=3, **{k: v for k, v in x.items() if k != "noise"})
    with pytest.raises(TypeError, match="unexpected sampler inputs"):
        sampler(cfg_scale=1.0, num_steps=3, images=x["input_ids"], **x)


def test_compile_is_deferred_to_the_first_cuda_capture():
    model, x = tiny_model_and_inputs(1)
    sampler = GraphedSampler(model, compile=True)
    sampler(cfg_scale=1.0, num_steps=2, **x)
    assert not sampler._compiled  # off CUDA nothing is compiled or captured
