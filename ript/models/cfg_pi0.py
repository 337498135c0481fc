"""pi0 with an optimality condition for classifier-free-guidance RL (CFGRL on flow matching).

The model is transformers' `PI0ForConditionalGeneration` plus a label `is_positive` that
is embedded and injected into the suffix (state + noisy-action tokens):

- `bias`: the label embedding (zero-initialised) is added to every action+time token;
- `concat`: a small label embedding (2 -> 32, as CFGRL's `nn.Embed(2, 32)`) joins the
  action and time embeddings at the input of the fusion MLP (its new input columns are
  zero-initialised, so the MLP is unchanged at start);
- `token`: an extra condition token between the state token and the action tokens. An
  extra key changes every softmax, so no initialisation of the token alone can leave the
  base model unchanged: its effect is gated, `v = v_base + tanh(gate) * (v_token - v_base)`
  with `gate = 0` at start (Flamingo-style tanh gating). It costs one more suffix pass.

In every mode the unconditional branch is an explicit label (0), in training and in
inference alike, and freshly added parameters leave the loaded base model's velocity
unchanged for every label, so post-training starts exactly at the base policy.

Label schemes: `binary` (0 = unconditional / not positive, 1 = positive; the notes'
scheme) and `ternary` (0 = null / unconditional, 1 = negative, 2 = positive; CFGRL's later
agents and pi*0.6's advantage conditioning).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from huggingface_hub.dataclasses import strict
from torch import nn
from transformers import AutoConfig, PI0Config, PI0ForConditionalGeneration
from transformers import initialization as init
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.models.pi0.modeling_pi0 import PI0ActionTimeEmbedding

COND_MODES = ("token", "concat", "bias")
LABEL_SCHEMES = {"binary": 2, "ternary": 3}
UNCOND = 0  # the unconditional label in both schemes


def positive_label(label_scheme: str) -> int:
    return LABEL_SCHEMES[label_scheme] - 1


@strict
class CFGPI0Config(PI0Config):
    r"""
    cond_mode (`str`, defaults to `"bias"`): `token`, `concat` or `bias`.
    label_scheme (`str`, defaults to `"binary"`): `binary` or `ternary`.
    cond_embed_dim (`int`, defaults to 32): width of the `concat` label embedding.
    """

    model_type = "ript_cfg_pi0"
    cond_mode: str = "bias"
    label_scheme: str = "binary"
    cond_embed_dim: int = 32

    def validate_architecture(self) -> None:
        super().validate_architecture()
        if self.cond_mode not in COND_MODES:
            raise ValueError(f"cond_mode {self.cond_mode!r}: expected one of {COND_MODES}")
        if self.label_scheme not in LABEL_SCHEMES:
            raise ValueError(
                f"label_scheme {self.label_scheme!r}: expected one of {sorted(LABEL_SCHEMES)}"
            )

    @property
    def num_cond_labels(self) -> int:
        return LABEL_SCHEMES[self.label_scheme]

    def to_stock_config(self) -> PI0Config:
        """The same architecture as transformers' stock `PI0Config` (no condition)."""
        own = ("model_type", "transformers_version", "cond_mode", "label_scheme", "cond_embed_dim")
        return PI0Config(**{k: v for k, v in self.to_dict().items() if k not in own})


AutoConfig.register(CFGPI0Config.model_type, CFGPI0Config, exist_ok=True)
# Checkpoints keep pi0's on-disk key layout (openpi / LeRobot names), in both directions.
register_checkpoint_conversion_mapping(
    CFGPI0Config.model_type, get_checkpoint_conversion_mapping(PI0Config.model_type), overwrite=True
)


class CFGActionTimeEmbedding(PI0ActionTimeEmbedding):
    """The stock suffix embedding (same parameter names) with the label injected."""

    def __init__(self, config: CFGPI0Config) -> None:
        super().__init__(config)
        hidden = config.dit_config.hidden_size
        self.cond_mode = config.cond_mode
        if config.cond_mode == "bias":
            self.cond_bias = nn.Embedding(config.num_cond_labels, hidden)
        elif config.cond_mode == "concat":
            self.cond_concat = nn.Embedding(config.num_cond_labels, config.cond_embed_dim)
            self.cond_concat_in = nn.Linear(config.cond_embed_dim, hidden, bias=False)
        else:
            self.cond_token = nn.Embedding(config.num_cond_labels, hidden)
        # Set by CFGPI0ForConditionalGeneration.forward for the duration of one call, so the
        # stock forward (which calls this module) is reused unchanged.
        self.labels: torch.Tensor | None = None
        self.include_token = True

    def init_condition_module(self, module: nn.Module) -> None:
        """Zero what must start at zero; the label tables keep a random init.

        transformers' `init` functions skip tensors loaded from a checkpoint.
        """
        if module is getattr(self, "cond_bias", None) or module is getattr(
            self, "cond_concat_in", None
        ):
            init.zeros_(module.weight)
        elif module is getattr(self, "cond_concat", None):
            init.normal_(module.weight, std=1.0)
        elif module is getattr(self, "cond_token", None):
            init.normal_(module.weight, std=0.02)

    def reset_condition_parameters(self) -> None:
        for module in self.children():
            self.init_condition_module(module)

    def forward(self, state: torch.Tensor, noise: torch.Tensor, timestep: torch.Tensor):
        labels = self.labels
        if labels is None:
            raise RuntimeError("call the CFG model with is_positive; it sets the labels")
        state_embeds = self.state_proj(state)
        action_embeds = self.action_in_proj(noise)
        time_embeds = self.sinusoid_embeds(timestep)
        time_embeds = time_embeds[:, None, :].expand_as(action_embeds).to(dtype=action_embeds.dtype)
        fused = self.action_time_mlp_in(torch.cat([action_embeds, time_embeds], dim=2))
        if self.cond_mode == "concat":
            # == a fusion MLP whose input also holds the label embedding (extra columns)
            fused = fused + self.cond_concat_in(self.cond_concat(labels))[:, None, :].to(
                fused.dtype
            )
        action_time_embeds = self.action_time_mlp_out(F.silu(fused))
        if self.cond_mode == "bias":
            action_time_embeds = action_time_embeds + self.cond_bias(labels)[:, None, :].to(
                action_time_embeds.dtype
            )
        tokens = [state_embeds[:, None, :]]
        if self.cond_mode == "token" and self.include_token:
            tokens.append(self.cond_token(labels)[:, None, :].to(action_time_embeds.dtype))
        return torch.cat([*tokens, action_time_embeds], dim=1)


class CFGPI0ForConditionalGeneration(PI0ForConditionalGeneration):
    """`PI0ForConditionalGeneration` whose velocity also depends on a label `is_positive`."""

    config: CFGPI0Config
    config_class = CFGPI0Config

    def __init__(self, config: CFGPI0Config) -> None:
        super().__init__(config)
        self.embed_action_time = CFGActionTimeEmbedding(config)
        if config.cond_mode == "token":
            self.cond_gate = nn.Parameter(torch.zeros(()))
        self.post_init()
        # A directly built model gets torch's default inits; from_pretrained initialises
        # missing (freshly added) parameters through _init_weights instead.
        self.embed_action_time.reset_condition_parameters()

    def _init_weights(self, module: nn.Module) -> None:
        super()._init_weights(module)
        embed = getattr(self, "embed_action_time", None)
        if isinstance(embed, CFGActionTimeEmbedding):
            embed.init_condition_module(module)
        if module is self and self.config.cond_mode == "token":
            init.zeros_(self.cond_gate)

    # --- flow-matching pieces -------------------------------------------------------------

    def sample_time(self, batch_size: int, device: torch.device) -> torch.Tensor:
        """pi0's training time: Beta(1.5, 1) * 0.999 + 0.001 (1 = noise, 0 = actions)."""
        c = self.config
        beta = torch.distributions.Beta(
            torch.tensor(c.time_sampling_beta_alpha), torch.tensor(c.time_sampling_beta_beta)
        )
        return (beta.sample((batch_size,)) * c.time_sampling_scale + c.time_sampling_offset).to(
            device=device, dtype=torch.float32
        )

    def check_labels(self, is_positive: torch.Tensor | None, batch_size: int) -> torch.Tensor:
        if is_positive is None:
            raise ValueError("is_positive is required: a LongTensor (B,) of condition labels")
        labels = torch.as_tensor(is_positive).long().reshape(-1)
        if labels.shape[0] != batch_size:
            raise ValueError(
                f"is_positive has {labels.shape[0]} labels for a batch of {batch_size}"
            )
        n = self.config.num_cond_labels
        if labels.numel() and (labels.min() < 0 or labels.max() >= n):
            raise ValueError(
                f"is_positive labels must lie in 0..{n - 1} for label_scheme "
                f"{self.config.label_scheme!r}, got {sorted(set(labels.tolist()))}"
            )
        return labels

    def forward(
        self,
        state: torch.Tensor,
        noise: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        *args,
        is_positive: torch.Tensor | None = None,
        actions: torch.Tensor | None = None,
        **kwargs,
    ):
        """The stock forward plus `is_positive` (LongTensor (B,))."""
        labels = self.check_labels(is_positive, state.shape[0]).to(state.device)
        return self._forward_labelled(
            labels, state, noise, timestep, *args, actions=actions, **kwargs
        )

    def _forward_labelled(
        self,
        labels: torch.Tensor,
        state: torch.Tensor,
        noise: torch.Tensor | None = None,
        timestep: torch.Tensor | None = None,
        *args,
        actions: torch.Tensor | None = None,
        **kwargs,
    ):
        """`forward` for labels already checked: no host-device sync, so it can be captured
        in a CUDA graph."""
        batch = state.shape[0]
        embed = self.embed_action_time
        embed.labels = labels
        try:
            if self.config.cond_mode != "token":
                return super().forward(state, noise, timestep, *args, actions=actions, **kwargs)
            # token mode: two passes share time and noise; the gate mixes them
            if timestep is None:
                timestep = self.sample_time(batch, state.device)
            if noise is None:
                noise = torch.randn(
                    batch,
                    self.config.chunk_size,
                    self.config.max_action_dim,
                    device=state.device,
                    dtype=state.dtype,
                )
            cache = kwargs.get("cache")
            prefix_length = cache.get_seq_length() if cache is not None else None
            with_token = super().forward(state, noise, timestep, *args, actions=actions, **kwargs)
            if cache is not None:
                cache.crop(prefix_length - cache.get_seq_length())
            embed.include_token = False
            base = super().forward(state, noise, timestep, *args, actions=actions, **kwargs)
            gate = torch.tanh(self.cond_gate).to(base.logits.dtype)
            velocity = base.logits + gate * (with_token.logits - base.logits)
            base.logits = velocity
            if actions is not None:
                base.loss = F.mse_loss(
                    noise - actions, velocity, reduction=self.config.loss_reduction
                )
            return base
        finally:
            embed.labels = None
            embed.include_token = True

    # --- prefix, velocity, loss, sampling -------------------------------------------------

    def embed_prefix(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Image + text embeddings; text alone in low-dim mode (no cameras)."""
        if pixel_values is None:
            return self.model.get_input_embeddings()(input_ids)
        return self.model.embed_prefix(input_ids, pixel_values, pixel_attention_mask)

    def prefix_cache(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
    ):
        """Run the VLM once; its KV cache serves every denoising step and both branches."""
        inputs_embeds = self.embed_prefix(input_ids, pixel_values, pixel_attention_mask)
        return self.model.vlm(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=attention_mask.cumsum(-1) - 1,
            token_type_ids=torch.zeros_like(attention_mask),
            use_cache=True,
        ).cache

    def velocity(
        self,
        state: torch.Tensor,
        x_t: torch.Tensor,
        time: torch.Tensor,
        cache,
        attention_mask: torch.Tensor,
        is_positive: torch.Tensor,
    ) -> torch.Tensor:
        """v(x_t, t | prefix, state, label) for checked labels; leaves the cache holding
        the prefix only."""
        prefix_length = cache.get_seq_length()
        out = self._forward_labelled(
            is_positive, state, x_t, time, attention_mask=attention_mask, cache=cache
        )
        cache.crop(prefix_length - cache.get_seq_length())
        return out.logits

    def compute_loss(
        self,
        state: torch.Tensor,
        actions: torch.Tensor,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        branches: list[torch.Tensor],
        pixel_values: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        action_dim: int | None = None,
        noise: torch.Tensor | None = None,
        time: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Per-sample flow-matching loss (len(branches), B), one label tensor per branch.

        All branches share one prefix pass, the time and the noise (openpi conventions:
        x_t = t * noise + (1 - t) * actions, target u = noise - actions); the MSE is taken
        over the first `action_dim` (real, unpadded) action dimensions only.
        """
        batch, n = state.shape[0], len(branches)
        if time is None:
            time = self.sample_time(batch, state.device)
        if noise is None:
            noise = torch.randn_like(actions)
        t = time[:, None, None].to(actions.dtype)
        x_t = t * noise + (1 - t) * actions
        target = noise - actions
        cache = self.prefix_cache(input_ids, attention_mask, pixel_values, pixel_attention_mask)
        if n > 1:
            cache.batch_repeat_interleave(n)
        labels = torch.stack([self.check_labels(b, batch) for b in branches], dim=1)
        labels = labels.reshape(-1).to(state.device)

        def rep(x: torch.Tensor) -> torch.Tensor:
            return x.repeat_interleave(n, dim=0)

        v = self.velocity(rep(state), rep(x_t), rep(time), cache, rep(attention_mask), labels)
        d = action_dim or actions.shape[-1]
        err = (v.reshape(batch, n, *v.shape[1:]) - target[:, None]) ** 2
        return err[..., :d].mean(dim=(-1, -2)).transpose(0, 1)

    @torch.no_grad()
    def sample_actions(
        self,
        state: torch.Tensor,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        noise: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_attention_mask: torch.Tensor | None = None,
        num_steps: int | None = None,
        cfg_scale: float = 1.0,
    ) -> torch.Tensor:
        """Euler from t=1 (noise) to t=0 (actions) with guidance.

        `cfg_scale == 1`: the positive branch alone, one forward per step. Otherwise
        `v = v_uncond + cfg_scale * (v_pos - v_uncond)` with both branches in one batched
        forward per step over the shared prefix cache.
        """
        num_steps = num_steps or self.config.num_inference_steps
        batch = state.shape[0]
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if noise is None:
            noise = torch.randn(
                batch,
                self.config.chunk_size,
                self.config.max_action_dim,
                device=state.device,
                dtype=state.dtype,
            )
        cache = self.prefix_cache(input_ids, attention_mask, pixel_values, pixel_attention_mask)
        positive = positive_label(self.config.label_scheme)
        guided = cfg_scale != 1.0
        if guided:
            cache.batch_repeat_interleave(2)
            state, attention_mask = (x.repeat_interleave(2, dim=0) for x in (state, attention_mask))
            labels = torch.full((2 * batch,), UNCOND, device=state.device)
            labels[0::2] = positive  # (pos, uncond) pairs, like the repeated inputs
        else:
            labels = torch.full((batch,), positive, device=state.device)
        x, dt = noise, -1.0 / num_steps
        for step in range(num_steps):
            time = torch.full((labels.shape[0],), 1.0 + step * dt, device=state.device)
            x_in = x.repeat_interleave(2, dim=0) if guided else x
            v = self.velocity(state, x_in, time, cache, attention_mask, labels)
            if guided:
                v_pos, v_uncond = v.reshape(batch, 2, *v.shape[1:]).unbind(1)
                v = v_uncond + cfg_scale * (v_pos - v_uncond)
            x = x + dt * v
        return x

    @classmethod
    def from_stock_pretrained(
        cls, path: str, *, cond_mode: str = "bias", label_scheme: str = "binary", **kwargs
    ) -> CFGPI0ForConditionalGeneration:
        """Load a stock `PI0ForConditionalGeneration.save_pretrained` directory and add fresh
        condition parameters (they leave its velocity unchanged). Local files only."""
        stock = PI0Config.from_pretrained(path, local_files_only=True)
        if stock.model_type != PI0Config.model_type:
            raise ValueError(f"{path}: config.json describes a {stock.model_type!r} model, not pi0")
        settings = {
            k: v
            for k, v in stock.to_dict().items()
            if k not in ("model_type", "transformers_version")
        }
        config = CFGPI0Config(**settings, cond_mode=cond_mode, label_scheme=label_scheme)
        return cls.from_pretrained(path, config=config, local_files_only=True, **kwargs)
