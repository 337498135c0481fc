"""pi0-scale speed of the CFG policy against transformers' stock PI0, on one GPU.

    python benchmarks/policy_speed.py [--preset pi0] [--dtype bfloat16] [--batch 1 8]

Random weights, `PI0Config()` sizes, 2 of 3 camera slots filled, 48 prompt tokens (the
setting in which the reference figures of the policy issue were measured). Prints, in one
run against stock on the same device:
  - stock `sample_actions` and a naive CFG that calls it twice;
  - the stock prefix alone;
  - our `sample_actions` single-branch (cfg_scale 1) and guided (cfg_scale 2), and the
    ratio guided / single;
  - a training step (forward + backward) at the training batch: stock loss vs our
    two-branch `compute_loss`, peak memory.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from transformers import PI0ForConditionalGeneration

from ript.models.cfg_pi0 import CFGPI0ForConditionalGeneration
from ript.models.graphs import GraphedSampler
from ript.models.presets import build_config, num_image_tokens


def timed(fn, repeats: int, warmup: int = 2) -> float:
    """Median milliseconds of `fn` over `repeats` runs, after `warmup` runs."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return sorted(times)[len(times) // 2]


def make_inputs(config, batch: int, device, dtype, prompt_tokens: int = 48, cameras=(1, 1, 0)):
    n_img = num_image_tokens(config)
    ids = torch.cat(
        [
            torch.full((batch, n_img * sum(cameras)), config.vlm_config.image_token_id),
            torch.randint(3, 1000, (batch, prompt_tokens)),
        ],
        dim=1,
    ).to(device)
    size = config.vlm_config.vision_config.image_size
    return dict(
        state=torch.randn(batch, config.max_state_dim, device=device, dtype=dtype),
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        pixel_values=torch.randn(batch, len(cameras), 3, size, size, device=device, dtype=dtype),
        pixel_attention_mask=torch.tensor([cameras] * batch, dtype=torch.bool, device=device),
        noise=torch.randn(
            batch, config.chunk_size, config.max_action_dim, device=device, dtype=dtype
        ),
    )


@torch.no_grad()
def sampling_rows(
    stock, ours, x: dict, repeats: int, compiled: GraphedSampler | None = None
) -> list[tuple[str, float, str]]:
    state = x["state"]
    kw = {k: v for k, v in x.items() if k != "state"}
    prefix = (x["input_ids"], x["attention_mask"], x["pixel_values"], x["pixel_attention_mask"])
    stock_ms = timed(lambda: stock.sample_actions(state, **kw), repeats)
    naive_ms = timed(lambda: [stock.sample_actions(state, **kw) for _ in range(2)], repeats)
    prefix_ms = timed(lambda: ours.prefix_cache(*prefix), repeats)
    single_ms = timed(lambda: ours.sample_actions(state, cfg_scale=1.0, **kw), repeats)
    cfg_ms = timed(lambda: ours.sample_actions(state, cfg_scale=2.0, **kw), repeats)
    graphed = GraphedSampler(ours)
    g_single = timed(lambda: graphed(state=state, cfg_scale=1.0, num_steps=10, **kw), repeats)
    g_cfg = timed(lambda: graphed(state=state, cfg_scale=2.0, num_steps=10, **kw), repeats)
    rows_compiled = []
    if compiled is not None:
        c_single = timed(lambda: compiled(state=state, cfg_scale=1.0, num_steps=10, **kw), repeats)
        c_cfg = timed(lambda: compiled(state=state, cfg_scale=2.0, num_steps=10, **kw), repeats)
        rows_compiled = [
            ("ours compiled+graphed cfg_scale=1", c_single, f"{stock_ms / c_single:.2f}x faster"),
            ("ours compiled+graphed cfg_scale=2", c_cfg, f"{c_cfg / c_single:.2f}x single"),
        ]
    return [
        ("stock sample_actions", stock_ms, "1.00x stock"),
        ("stock naive CFG (2 calls)", naive_ms, f"{naive_ms / stock_ms:.2f}x stock"),
        ("prefix only", prefix_ms, f"{prefix_ms / stock_ms:.2f}x stock"),
        ("ours cfg_scale=1", single_ms, f"{stock_ms / single_ms:.2f}x faster"),
        ("ours cfg_scale=2 (batched CFG)", cfg_ms, f"{cfg_ms / single_ms:.2f}x single"),
        ("ours graphed cfg_scale=1", g_single, f"{stock_ms / g_single:.2f}x faster"),
        ("ours graphed cfg_scale=2", g_cfg, f"{g_cfg / g_single:.2f}x single"),
        *rows_compiled,
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="pi0")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--cond-mode", default="bias")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also time a compiled copy of ours (compile_for_sampling) replayed from graphs",
    )
    parser.add_argument(
        "--adamw",
        action="store_true",
        help="also time a full fine-tuning step of ours with AdamW (optimizer state included)",
    )
    args = parser.parse_args()
    device, dtype = torch.device("cuda"), getattr(torch, args.dtype)
    config = build_config(args.preset, cond_mode=args.cond_mode)
    stock_config = config.to_stock_config()
    torch.manual_seed(0)
    stock = PI0ForConditionalGeneration(stock_config).to(device, dtype).eval()
    ours = CFGPI0ForConditionalGeneration(config).to(device, dtype).eval()
    ours.load_state_dict(stock.state_dict(), strict=False)
    params = sum(p.numel() for p in ours.parameters()) / 1e9
    print(
        f"preset={args.preset} params={params:.2f}B dtype={args.dtype} "
        f"cond_mode={args.cond_mode} device={torch.cuda.get_device_name()}"
    )
    print(f"{'what':<34} {'batch':>5} {'ms':>9} {'ratio':>16}")
    compiled = GraphedSampler(copy.deepcopy(ours), compile=True) if args.compile else None
    for batch in args.batch:
        for what, ms, ratio in sampling_rows(
            stock, ours, make_inputs(config, batch, device, dtype), args.repeats, compiled
        ):
            print(f"{what:<34} {batch:>5} {ms:>9.1f} {ratio:>16}", flush=True)
    del compiled
    torch.cuda.empty_cache()

    batch = args.train_batch
    x = make_inputs(config, batch, device, dtype)
    actions = torch.randn_like(x["noise"])
    ours.train()
    stock.train()
    labels = [
        torch.ones(batch, dtype=torch.long, device=device),
        torch.zeros(batch, dtype=torch.long, device=device),
    ]

    def stock_step():
        stock(actions=actions, **x).loss.backward()

    def cfg_step():
        cfg_backward(ours, x, actions, labels)

    for name, step, model in (
        ("stock train step", stock_step, stock),
        ("ours CFG train step (2 branches)", cfg_step, ours),
    ):
        model.zero_grad(set_to_none=True)
        torch.cuda.reset_peak_memory_stats()
        try:
            ms = timed(step, max(3, args.repeats // 3), warmup=1)
        except torch.cuda.OutOfMemoryError:
            print(f"{name:<34} {batch:>5} {'out of memory':>9}")
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()
            continue
        peak = torch.cuda.max_memory_allocated() / 2**30
        if name.startswith("stock"):
            stock_train = ms
        print(f"{name:<34} {batch:>5} {ms:>9.1f} {ms / stock_train:>14.2f}x  peak {peak:.1f} GiB")
        model.zero_grad(set_to_none=True)
    if args.adamw:
        del stock
        torch.cuda.empty_cache()
        adamw_step(ours, x, actions, labels)


def training_flops(model: CFGPI0ForConditionalGeneration, batch: int, branches: int = 2) -> float:
    """Matmul FLOPs of one forward+backward (6 N per token and parameter; attention scores
    left out): the VLM text stack over the prefix tokens, SigLIP over its patches (2 cameras),
    the action expert over the suffix of every branch."""
    c = model.config
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    vlm = model.model.vlm
    vision = count(vlm.vision_tower) + count(vlm.multi_modal_projector)
    text = count(vlm.language_model) - vlm.get_input_embeddings().weight.numel()
    expert = count(model.model.dit)
    image_tokens = 2 * num_image_tokens(c)
    prefix_tokens = image_tokens + 48
    suffix_tokens = c.chunk_size + 1
    per_sample = text * prefix_tokens + vision * image_tokens + expert * suffix_tokens * branches
    return 6.0 * per_sample * batch


def cfg_backward(ours, x: dict, actions: torch.Tensor, labels: list[torch.Tensor]) -> None:
    """Backward of the mean two-branch CFG loss, both branches over one prefix pass."""
    ours.compute_loss(
        x["state"],
        actions,
        x["input_ids"],
        x["attention_mask"],
        labels,
        x["pixel_values"],
        x["pixel_attention_mask"],
        action_dim=7,
    ).mean().backward()


def adamw_step(ours, x, actions, labels) -> None:
    """A full fine-tuning step of the two-branch loss with fused AdamW (bf16 weights,
    optimizer state in the parameters' dtype)."""
    optimizer = torch.optim.AdamW(
        ours.parameters(), lr=1e-5, betas=(0.9, 0.95), weight_decay=1e-10, fused=True
    )

    def step():
        optimizer.zero_grad(set_to_none=True)
        cfg_backward(ours, x, actions, labels)
        torch.nn.utils.clip_grad_norm_(ours.parameters(), 1.0)
        optimizer.step()

    torch.cuda.reset_peak_memory_stats()
    batch = x["state"].shape[0]
    try:
        ms = timed(step, 3, warmup=1)
    except torch.cuda.OutOfMemoryError:
        print(f"{'ours CFG step + AdamW':<34} {batch:>5} {'out of memory':>9}")
        return
    peak = torch.cuda.max_memory_allocated() / 2**30
    tflops = training_flops(ours, batch) / (ms / 1e3) / 1e12
    print(
        f"{'ours CFG step + AdamW':<34} {batch:>5} {ms:>9.1f} {'':>14}   peak {peak:.1f} GiB, "
        f"~{tflops:.0f} TFLOP/s (6N per token)"
    )


if __name__ == "__main__":
    main()
