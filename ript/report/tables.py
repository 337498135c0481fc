"""`ript tables`: the sweep table, one row per grid point and one for the base policy.

Columns: success with its 95% Wilson interval, per-task success, mean episode length,
inference time, and the difference to the base policy with its 95% interval; the grid point
with the highest success rate is marked best. Success rates and their intervals are copied
from the runs' metrics.json.

Every policy is evaluated on the same episodes (task, init state, rollout index, with the
same seeds), so the difference to the base is a paired comparison: the interval is
Newcombe's score interval for paired proportions, which is narrower than the independent one
when the two policies tend to succeed and fail on the same init states. Where the episodes
do not match (metrics from different evaluation settings) the independent interval is used,
and the `diff_interval` column says which one a row has.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from ript.evaluation.metrics import (
    newcombe_difference,
    paired_counts,
    paired_episodes_needed,
    paired_newcombe_difference,
)
from ript.files import write_text_atomic

KEY_COLUMNS = ["policy", "cond_mode", "alpha_uncond", "cfg_scale"]


def load_metrics(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        m = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a metrics.json written by ript evaluate ({e})") from e
    missing = [k for k in ("overall", "per_task", "inference", "settings") if k not in m]
    if missing:
        raise ValueError(f"{path}: not a metrics.json written by ript evaluate (no {missing})")
    return m


def metrics_row(path: str | Path, m: dict[str, Any]) -> dict[str, Any]:
    overall, settings = m["overall"], m["settings"]
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
    loaded = {str(p): load_metrics(p) for p in [base, *grid]}
    base_row = metrics_row(base, loaded[str(base)])
    rows = [metrics_row(p, loaded[str(p)]) for p in grid]
    table = pd.DataFrame(rows).sort_values(["cond_mode", "alpha_uncond", "cfg_scale"])
    table = pd.concat([pd.DataFrame([base_row]), table], ignore_index=True)
    diffs, methods, needed = [], [], []
    for r in table.itertuples():
        counts = paired_counts(
            loaded[r.metrics].get("episodes", []), loaded[str(base)].get("episodes", [])
        )
        if counts is None:
            diffs.append(
                newcombe_difference(r.successes, r.n, base_row["successes"], base_row["n"])
            )
        else:
            diffs.append(paired_newcombe_difference(*counts))
        methods.append("independent" if counts is None else "paired")
        needed.append(math.nan if counts is None else paired_episodes_needed(*counts))
    table["diff_vs_base"] = [d[0] for d in diffs]
    table["diff_ci95_low"] = [d[1] for d in diffs]
    table["diff_ci95_high"] = [d[2] for d in diffs]
    table["diff_interval"] = methods
    # paired episodes the observed gain would need (80% power, its observed discordance)
    table["episodes_needed"] = needed
    table["resolved_vs_base"] = (table["diff_ci95_low"] > 0) | (table["diff_ci95_high"] < 0)
    table.loc[0, "resolved_vs_base"] = False
    table.loc[0, "episodes_needed"] = math.nan
    grid_rows = table.index[table["policy"] == "cfg"]
    table["best"] = False
    if len(grid_rows):
        table.loc[table.loc[grid_rows, "success_rate"].idxmax(), "best"] = True
    return table


def success_cell(r: dict[str, Any]) -> str:
    return f"{r['success_rate']:.2f} [{r['ci95_low']:.2f}, {r['ci95_high']:.2f}]"


def diff_cell(r: dict[str, Any]) -> str:
    return f"{r['diff_vs_base']:+.2f} [{r['diff_ci95_low']:+.2f}, {r['diff_ci95_high']:+.2f}]" + (
        " *" if r["resolved_vs_base"] else ""
    )


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
        diff = "" if r["policy"] == "base" else diff_cell(r)
        cells = [
            name,
            r["cond_mode"],
            "" if pd.isna(r["alpha_uncond"]) else f"{r['alpha_uncond']:g}",
            "" if pd.isna(r["cfg_scale"]) else f"{r['cfg_scale']:g}",
            success_cell(r),
            str(r["n"]),
            *[f"{r[t]:.2f}" for t in tasks],
            f"{r['mean_episode_length']:.0f}",
            ms,
            diff,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    grid_methods = set(table.loc[table["policy"] == "cfg", "diff_interval"])
    interval = {
        frozenset({"paired"}): "Newcombe's interval for paired outcomes: every policy ran the "
        "same episodes",
        frozenset({"independent"}): "Newcombe's interval for independent samples",
    }.get(frozenset(grid_methods), "see the diff_interval column of sweep.csv")
    lines.append("")
    lines.append(
        "success: rate over all evaluation episodes [95% Wilson interval]; vs base: difference "
        f"to the base policy [95% interval; {interval}], * where the interval excludes 0."
    )
    best = table[table["best"]].to_dict("records")
    if best and not best[0]["resolved_vs_base"] and not pd.isna(best[0]["episodes_needed"]):
        r = best[0]
        need = (
            "no number of episodes (no difference)"
            if math.isinf(r["episodes_needed"])
            else (f"about {r['episodes_needed']:.0f} paired episodes per policy")
        )
        lines.append(
            f"The best point's {r['diff_vs_base']:+.2f} is not resolved at n = {r['n']}; with "
            f"the measured discordance it would take {need} to resolve at 80% power "
            "(McNemar, two-sided 5%)."
        )
    return "\n".join(lines) + "\n"


def write_texts(texts: dict[str | Path, str]) -> None:
    for out, text in texts.items():
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out, text)


def write_tables(
    grid: list[str], base: str, csv_out: str | Path, md_out: str | Path
) -> pd.DataFrame:
    table = sweep_table(grid, base)
    write_texts({csv_out: table.to_csv(index=False), md_out: markdown(table)})
    return table


ROUND_COLUMNS = [
    "cond_mode", "alpha_uncond", "cfg_scale", "success_rate", "ci95_low", "ci95_high", "n",
    "diff_vs_base", "diff_ci95_low", "diff_ci95_high", "diff_interval", "resolved_vs_base",
]  # fmt: skip


def read_table(path: str | Path, required: set[str], what: str) -> pd.DataFrame:
    """A table csv of ript's (empty cells stay NaN) that has the `required` columns."""
    try:
        table = pd.read_csv(path, keep_default_na=False, na_values=[""])
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise ValueError(f"{path}: not {what} ({e})") from e
    missing = required - set(table.columns)
    if missing:
        raise ValueError(f"{path}: not {what} (no {sorted(missing)})")
    return table


def read_sweep(path: str | Path) -> pd.DataFrame:
    """A sweep.csv written by `write_tables`."""
    required = {"policy", "best", "cfg_scale", "metrics", *ROUND_COLUMNS}
    return read_table(path, required, "a sweep table of `ript tables`")


def best_row(table: pd.DataFrame, path: str | Path) -> dict[str, Any]:
    """The grid row marked best in `table`, read from `path`."""
    best = table[(table["policy"] == "cfg") & table["best"].astype(bool)]
    if best.empty:
        raise ValueError(f"{path}: no grid row is marked best")
    return best.iloc[0].to_dict()


def _paired_difference(path_1: str, path_2: str) -> tuple[float, float, float]:
    """The paired difference (and 95% interval) of two evaluations; NaN unless they pair."""
    counts = paired_counts(
        load_metrics(path_1).get("episodes", []), load_metrics(path_2).get("episodes", [])
    )
    return (math.nan,) * 3 if counts is None else paired_newcombe_difference(*counts)


def rounds_table(sweeps: list[pd.DataFrame], paths: list[str | Path]) -> pd.DataFrame:
    """The best grid point of each round's sweep table, in round order (round 1 first), with
    its paired difference to the policy the round started from (the base, then the previous
    round's best)."""
    rows = []
    start = sweeps[0].iloc[0]["metrics"] if sweeps else None
    for number, (table, path) in enumerate(zip(sweeps, paths, strict=True), start=1):
        best = best_row(table, path)
        diff = _paired_difference(best["metrics"], start)
        rows.append(
            {
                "round": number,
                **{c: best[c] for c in ROUND_COLUMNS},
                "diff_vs_start": diff[0],
                "start_ci95_low": diff[1],
                "start_ci95_high": diff[2],
                "sweep": str(path),
            }
        )
        start = best["metrics"]
    return pd.DataFrame(rows)


SELECTION_NOTES = {
    "eval": "Round r + 1 collects with round r's best point, chosen on these evaluation init "
    "states, so the rows carry a selection effect",
    "separate": "Each round's point was chosen on selection episodes (eval_schedule: adaptive, "
    "tables/selection.md of the round) and its row here is its run on the evaluation init "
    "states, which took no part in the choice; round r + 1 collects with it",
}


def rounds_markdown(table: pd.DataFrame, base_success: str, selection: str = "eval") -> str:
    header = [
        "round", "best cond_mode", "alpha_uncond", "cfg_scale", "success (95% CI)", "n",
        "vs base (95% CI)", "vs round start (95% CI)",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in table.to_dict("records"):
        start = (
            "unpaired"
            if pd.isna(r["diff_vs_start"])
            else f"{r['diff_vs_start']:+.2f} [{r['start_ci95_low']:+.2f}, "
            f"{r['start_ci95_high']:+.2f}]"
            + (" *" if r["start_ci95_low"] > 0 or r["start_ci95_high"] < 0 else "")
        )
        cells = [
            str(r["round"]),
            r["cond_mode"],
            f"{r['alpha_uncond']:g}",
            f"{r['cfg_scale']:g}",
            success_cell(r),
            str(r["n"]),
            diff_cell(r),
            start,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"The best grid point of each round; base policy: {base_success}. "
        f"{SELECTION_NOTES[selection]}. Round start: the base for round 1, the previous "
        "round's point after; paired intervals (Newcombe), * where one excludes 0.",
    ]
    return "\n".join(lines) + "\n"


def write_rounds_table(
    sweeps: list[str], csv_out: str | Path, md_out: str | Path, selection: str = "eval"
) -> pd.DataFrame:
    tables = [read_sweep(path) for path in sweeps]
    table = rounds_table(tables, sweeps)
    base = success_cell(tables[0].iloc[0].to_dict())
    md = rounds_markdown(table, base, selection)
    write_texts({csv_out: table.to_csv(index=False), md_out: md})
    return table
