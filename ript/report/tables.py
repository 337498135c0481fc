"""`ript tables`: the sweep table, one row per grid point and one for the base policy.

Columns: success with its 95% Wilson interval, per-task success, mean episode length,
inference time, and the difference to the base policy with its 95% Newcombe interval (the
hybrid Wilson score interval of a difference of two independent proportions); the grid point
with the highest success rate is marked best. The numbers are copied from the runs'
metrics.json, never recomputed from episodes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from ript.evaluation.metrics import wilson_interval
from ript.files import write_text_atomic

KEY_COLUMNS = ["policy", "cond_mode", "alpha_uncond", "cfg_scale"]


def newcombe_difference(s1: int, n1: int, s2: int, n2: int) -> tuple[float, float, float]:
    """p1 - p2 and its 95% interval (Newcombe 1998, method 10)."""
    p1, p2 = s1 / n1, s2 / n2
    l1, u1 = wilson_interval(s1, n1)
    l2, u2 = wilson_interval(s2, n2)
    d = p1 - p2
    low = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    high = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, low, high


def metrics_row(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        m = json.loads(path.read_text())
        overall, settings = m["overall"], m["settings"]
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{path}: not a metrics.json written by ript evaluate ({e})") from e
    training = settings.get("training") or {}
    is_grid = training.get("mode") == "cfg"
    row = {
        "policy": "cfg" if is_grid else "base",
        "cond_mode": training.get("cond_mode", "") if is_grid else "",
        "alpha_uncond": training.get("alpha_uncond") if is_grid else math.nan,
        "cfg_scale": settings.get("cfg_scale") if is_grid else math.nan,
        "success_rate": overall["success_rate"],
        "ci95_low": overall["ci95_low"],
        "ci95_high": overall["ci95_high"],
        "successes": overall["successes"],
        "n": overall["n"],
        "mean_episode_length": overall["mean_episode_length"],
        "ms_per_chunk": m["inference"]["mean_ms_per_chunk"],
        "metrics": str(path),
    }
    for task, block in sorted(m["per_task"].items(), key=lambda kv: int(kv[0])):
        row[f"task{task}"] = block["success_rate"]
    return row


def sweep_table(grid: list[str | Path], base: str | Path) -> pd.DataFrame:
    """Base row first, then the grid sorted by (cond_mode, alpha_uncond, cfg_scale)."""
    base_row = metrics_row(base)
    rows = [metrics_row(p) for p in grid]
    table = pd.DataFrame(rows).sort_values(["cond_mode", "alpha_uncond", "cfg_scale"])
    table = pd.concat([pd.DataFrame([base_row]), table], ignore_index=True)
    diffs = [
        newcombe_difference(r.successes, r.n, base_row["successes"], base_row["n"])
        for r in table.itertuples()
    ]
    table["diff_vs_base"] = [d[0] for d in diffs]
    table["diff_ci95_low"] = [d[1] for d in diffs]
    table["diff_ci95_high"] = [d[2] for d in diffs]
    table["resolved_vs_base"] = (table["diff_ci95_low"] > 0) | (table["diff_ci95_high"] < 0)
    table.loc[0, "resolved_vs_base"] = False
    grid_rows = table.index[table["policy"] == "cfg"]
    table["best"] = False
    if len(grid_rows):
        table.loc[table.loc[grid_rows, "success_rate"].idxmax(), "best"] = True
    return table


def markdown(table: pd.DataFrame) -> str:
    tasks = [c for c in table.columns if c.startswith("task")]
    header = (
        ["policy", "cond_mode", "alpha_uncond", "cfg_scale", "success (95% CI)", "n"]
        + tasks
        + ["ep. length", "ms/chunk", "vs base (95% CI)"]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in table.to_dict("records"):
        name = ("**best** " if r["best"] else "") + r["policy"]
        ms = (
            ""
            if r["ms_per_chunk"] is None or pd.isna(r["ms_per_chunk"])
            else f"{r['ms_per_chunk']:.1f}"
        )
        diff = (
            ""
            if r["policy"] == "base"
            else f"{r['diff_vs_base']:+.2f} [{r['diff_ci95_low']:+.2f}, {r['diff_ci95_high']:+.2f}]"
            + (" *" if r["resolved_vs_base"] else "")
        )
        cells = [
            name,
            r["cond_mode"],
            "" if pd.isna(r["alpha_uncond"]) else f"{r['alpha_uncond']:g}",
            "" if pd.isna(r["cfg_scale"]) else f"{r['cfg_scale']:g}",
            f"{r['success_rate']:.2f} [{r['ci95_low']:.2f}, {r['ci95_high']:.2f}]",
            str(r["n"]),
            *[f"{r[t]:.2f}" for t in tasks],
            f"{r['mean_episode_length']:.0f}",
            ms,
            diff,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        "success: rate over all evaluation episodes [95% Wilson interval]; vs base: difference "
        "to the base policy [95% Newcombe interval], * where the interval excludes 0."
    )
    return "\n".join(lines) + "\n"


def write_tables(
    grid: list[str], base: str, csv_out: str | Path, md_out: str | Path
) -> pd.DataFrame:
    table = sweep_table(grid, base)
    for out, text in ((Path(csv_out), table.to_csv(index=False)), (Path(md_out), markdown(table))):
        out.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, text)
    return table
