"""`ript plots`: success vs cfg_scale, a cond_mode x alpha_uncond heatmap, training curves."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ript.files import atomic_output  # noqa: E402


def _save(fig: plt.Figure, out: str | Path) -> None:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_output(out) as tmp:
            fig.savefig(tmp, dpi=120, bbox_inches="tight")
    finally:
        plt.close(fig)


def success_vs_cfg(table: pd.DataFrame, out: str | Path) -> None:
    """A panel per alpha_uncond, a line per cond_mode with its 95% band; the base for
    reference where the table has it (a sweep table; a selection table has none)."""
    grid = table[table["policy"] == "cfg"]
    bases = table[table["policy"] == "base"]
    alphas = sorted(grid["alpha_uncond"].unique())
    fig, axes = plt.subplots(
        1, len(alphas), figsize=(4.2 * len(alphas), 3.6), sharey=True, squeeze=False
    )
    for ax, alpha in zip(axes[0], alphas, strict=True):
        for base in bases.head(1).itertuples():
            ax.axhspan(base.ci95_low, base.ci95_high, color="0.85", label="_base band")
            ax.axhline(base.success_rate, color="0.3", ls="--", label="base policy")
        for cond_mode, rows in grid[grid["alpha_uncond"] == alpha].groupby("cond_mode"):
            rows = rows.sort_values("cfg_scale")
            (line,) = ax.plot(rows["cfg_scale"], rows["success_rate"], "o-", label=cond_mode)
            ax.fill_between(
                rows["cfg_scale"],
                rows["ci95_low"],
                rows["ci95_high"],
                color=line.get_color(),
                alpha=0.2,
            )
        ax.set_title(f"alpha_uncond = {alpha:g}")
        ax.set_xlabel("cfg_scale")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    episodes = "selection episodes" if bases.empty else "evaluation episodes"
    axes[0][0].set_ylabel(f"success on {episodes} (95% Wilson CI)")
    axes[0][-1].legend(loc="best", fontsize=8)
    _save(fig, out)


def heatmap(table: pd.DataFrame, out: str | Path) -> None:
    """Success of every (cond_mode, alpha_uncond) at the best grid point's cfg_scale."""
    grid = table[table["policy"] == "cfg"]
    scale = table.loc[table["best"], "cfg_scale"].iloc[0]
    at = grid[grid["cfg_scale"] == scale]
    modes, alphas = sorted(grid["cond_mode"].unique()), sorted(grid["alpha_uncond"].unique())
    values = np.full((len(modes), len(alphas)), np.nan)
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(alphas), 1.2 + 0.8 * len(modes)))
    for r in at.itertuples():
        i, j = modes.index(r.cond_mode), alphas.index(r.alpha_uncond)
        values[i, j] = r.success_rate
        ax.text(
            j,
            i,
            f"{r.success_rate:.2f}\n[{r.ci95_low:.2f}, {r.ci95_high:.2f}]",
            ha="center",
            va="center",
            fontsize=8,
        )
    image = ax.imshow(values, vmin=0, vmax=1, cmap="viridis", alpha=0.8)
    ax.set_xticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_yticks(range(len(modes)), modes)
    ax.set_xlabel("alpha_uncond")
    ax.set_ylabel("cond_mode")
    ax.set_title(f"success at cfg_scale = {scale:g} (best)")
    fig.colorbar(image, ax=ax, label="success rate")
    _save(fig, out)


def training_curves(runs: dict[str, str | Path], out: str | Path, window: int = 20) -> None:
    """loss_pos and loss_uncond per run (rolling mean over `window` steps)."""
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharex=True)
    for name, path in runs.items():
        m = pd.read_csv(path)
        for ax, column in zip(axes, ("loss_pos", "loss_uncond"), strict=True):
            ax.plot(m["step"], m[column].rolling(window, min_periods=1).mean(), label=name)
    for ax, title in zip(
        axes, ("positive branch (w_pos-weighted)", "unconditional branch"), strict=True
    ):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("flow-matching loss")
    axes[1].legend(fontsize=7)
    _save(fig, out)
