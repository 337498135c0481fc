"""Whole-call CUDA graphs for `sample_actions`.

pi0 inference at batch 1 is launch-bound: the prefix and ten denoising steps issue thousands
of small kernels. Capturing the whole call (prefix, KV-cache reuse, both CFG branches, every
Euler step) in one CUDA graph per input shape and replaying it removes the launch overhead.
The model's sampling path makes no host-device synchronisation, so it captures as is.
With `compile=True` the Gemma stacks switch to grouped-query attention without repeated KV
heads (`ript.models.attention`; cuDNN's SDPA kernel alone took half of a denoising step)
and, with SigLIP, are compiled as whole modules (per-layer compilation recompiles on every
layer's KV-cache guards), which fuses their elementwise kernels before capture. They are
compiled with inductor's freezing: the weights become constants, so the q/k/v and the
gate/up projections sharing an input are concatenated into one matmul each (7 -> 4 GEMMs
per layer). Frozen weights are why a model is compiled for sampling only after its weights
are final (`ript evaluate` / `ript collect` load a checkpoint, then sample). Off CUDA the
sampler simply calls the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ript.models.attention import GROUPED_ATTENTION
from ript.models.cfg_pi0 import CFGPI0ForConditionalGeneration

INPUTS = ("state", "input_ids", "pixel_values", "noise", "attention_mask", "pixel_attention_mask")


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    inputs: dict[str, torch.Tensor]
    output: torch.Tensor


def compile_for_sampling(model: CFGPI0ForConditionalGeneration) -> None:
    """Switch both Gemma stacks to grouped attention, then compile them and SigLIP in place
    (static shapes, frozen weights: the compilation happens at the first no-grad call)."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    vlm = model.model.vlm
    for gemma in (model.model.dit, vlm.language_model):
        gemma.set_attn_implementation(GROUPED_ATTENTION)
    for module in (model.model.dit, vlm.language_model, vlm.vision_tower):
        module.compile(dynamic=False, options={"freezing": True})


class GraphedSampler:
    """`sample_actions` replayed from one CUDA graph per (shapes, cfg_scale, num_steps)."""

    def __init__(
        self, model: CFGPI0ForConditionalGeneration, warmup: int = 3, compile: bool = False
    ) -> None:
        self.model = model
        self.warmup = warmup
        self.compile = compile
        self._compiled = False
        self._graphs: dict[tuple, _Captured] = {}

    @torch.no_grad()
    def __call__(self, *, cfg_scale: float, num_steps: int, **inputs: torch.Tensor | None):
        present = {k: v for k, v in inputs.items() if v is not None}
        unknown = set(present) - set(INPUTS)
        if unknown:
            raise TypeError(f"unexpected sampler inputs {sorted(unknown)}")
        if "noise" not in present:
            raise ValueError("graphed sampling needs explicit noise (a static input)")
        if present["state"].device.type != "cuda":
            return self.model.sample_actions(cfg_scale=cfg_scale, num_steps=num_steps, **present)
        key = (
            tuple((k, tuple(v.shape), v.dtype) for k, v in sorted(present.items())),
            float(cfg_scale),
            int(num_steps),
        )
        if key not in self._graphs:
            if self.compile and not self._compiled:
                compile_for_sampling(self.model)
                self._compiled = True
            self._graphs[key] = self._capture(present, cfg_scale, num_steps)
        captured = self._graphs[key]
        for name, value in present.items():
            captured.inputs[name].copy_(value)
        captured.graph.replay()
        return captured.output.clone()

    def _capture(self, inputs: dict[str, torch.Tensor], cfg_scale: float, num_steps: int):
        static = {k: v.clone() for k, v in inputs.items()}

        def run() -> torch.Tensor:
            return self.model.sample_actions(cfg_scale=cfg_scale, num_steps=num_steps, **static)

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up outside the graph (allocator, lazy init)
            for _ in range(self.warmup):
                run()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            output = run()
        return _Captured(graph, static, output)

    @property
    def num_graphs(self) -> int:
        return len(self._graphs)
