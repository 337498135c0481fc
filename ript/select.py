"""`ript contenders` and `ript select`: the adaptive evaluation schedule.

Evaluating every grid point on all evaluation episodes costs (points x episodes), and the
best point's interval on the episodes it was picked on is biased upwards (the winner's
curse). With `eval_schedule: adaptive` the workflow instead

1. screens: every grid point runs the same few episodes (`screen_init_states`);
2. keeps the contenders (`ript contenders`): the best by screen success and every point whose
   paired 95% interval to it (Newcombe's, as in the sweep table) does not exclude 0, at most
   `max_contenders` of them by screen success;
3. selects (`ript select`): the contenders also run the `contend_init_states` episodes; the
   one with the most successes over all its selection episodes is chosen;
4. runs only the chosen point on the evaluation init states, paired with the base: those
   episodes took no part in the choice, so the interval of that difference is honest.

Ties go to the grid's order (cond_mode, then smaller alpha_uncond, then smaller cfg_scale).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from ript.evaluation.metrics import paired_counts, paired_newcombe_difference, success_summary
from ript.report.tables import load_metrics, success_cell, write_texts

POINT = ["cond_mode", "alpha_uncond", "cfg_scale"]


def grid_point(path: str | Path, metrics: dict[str, Any]) -> tuple[str, float, float]:
    """(cond_mode, alpha_uncond, cfg_scale) of a grid point's evaluation."""
    training = metrics["settings"].get("training") or {}
    if training.get("mode") != "cfg":
        raise ValueError(f"{path}: not an evaluation of a CFG-trained grid point")
    return (
        training["cond_mode"],
        float(training["alpha_uncond"]),
        float(metrics["settings"]["cfg_scale"]),
    )


def _load_points(paths: list[str | Path], stage: str) -> dict[tuple, tuple[str, dict]]:
    points: dict[tuple, tuple[str, dict]] = {}
    for path in paths:
        metrics = load_metrics(path)
        point = grid_point(path, metrics)
        if point in points:
            raise ValueError(f"{path}: grid point {point} is also in {points[point][0]} ({stage})")
        points[point] = (str(path), metrics)
    return points


def screen_table(screen: list[str | Path]) -> pd.DataFrame:
    """One row per grid point: screen success and the paired difference to the screen's best."""
    points = _load_points(screen, "screen")
    order = sorted(points)
    best = max(order, key=lambda p: (points[p][1]["overall"]["successes"], -order.index(p)))
    best_episodes = points[best][1].get("episodes", [])
    rows = []
    for point in order:
        path, m = points[point]
        counts = paired_counts(m.get("episodes", []), best_episodes)
        if counts is None:
            raise ValueError(
                f"{path}: its screen episodes do not pair with {points[best][0]}'s; every grid "
                "point must run the same screen episodes"
            )
        diff, low, high = paired_newcombe_difference(*counts)
        rows.append(
            {
                **dict(zip(POINT, point, strict=True)),
                "screen_successes": m["overall"]["successes"],
                "screen_n": m["overall"]["n"],
                "screen_success": m["overall"]["success_rate"],
                "diff_vs_screen_best": diff,
                "diff_ci95_low": low,
                "diff_ci95_high": high,
                "screen_best": point == best,
                "metrics": path,
            }
        )
    return pd.DataFrame(rows)


def contenders(screen: list[str | Path], max_contenders: int, out: str | Path) -> dict[str, Any]:
    """Write `out` (json): the screen table and the screen metrics of the contenders."""
    table = screen_table(screen)
    in_contention = table[table["screen_best"] | (table["diff_ci95_high"] >= 0)]
    ranked = in_contention.sort_values(
        "screen_successes", ascending=False, kind="stable"
    )  # the table is in grid order, so ties keep it
    kept = ranked.head(max_contenders)
    result = {
        "max_contenders": max_contenders,
        "contenders": kept["metrics"].tolist(),
        "screen": table.to_dict("records"),
    }
    write_texts({out: json.dumps(result, indent=2) + "\n"})
    return result


def read_contenders(path: str | Path) -> list[str]:
    """The screen metrics.json paths of the contenders listed in `path`."""
    try:
        return list(json.loads(Path(path).read_text())["contenders"])
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{path}: not a contenders file of `ript contenders` ({e})") from e


def selection_table(screen: list[str | Path], contend: list[str | Path]) -> pd.DataFrame:
    """The screen table plus each contender's contend episodes and its pooled success; the
    contender with the most pooled successes is marked best (the grid point chosen)."""
    table = screen_table(screen)
    contended = _load_points(contend, "contend")
    unknown = set(contended) - {tuple(r) for r in table[POINT].itertuples(index=False)}
    if unknown:
        raise ValueError(f"contend metrics of grid points that were not screened: {unknown}")
    rows = []
    for row in table.to_dict("records"):
        point = tuple(row[k] for k in POINT)
        successes, n = row["screen_successes"], row["screen_n"]
        row["contender"] = point in contended
        row["contend_successes"], row["contend_n"] = 0, 0
        if point in contended:
            path, m = contended[point]
            row["contend_successes"], row["contend_n"] = (
                m["overall"]["successes"],
                m["overall"]["n"],
            )
            row["contend_metrics"] = path
            successes, n = successes + row["contend_successes"], n + row["contend_n"]
        rows.append({"policy": "cfg", **row, **success_summary(successes, n)})
    table = pd.DataFrame(rows)
    table["best"] = False
    if table["contender"].any():
        ranked = table[table["contender"]].sort_values(
            ["successes", "screen_successes"], ascending=False, kind="stable"
        )
        table.loc[ranked.index[0], "best"] = True
    return table


def selection_markdown(table: pd.DataFrame) -> str:
    header = [
        "cond_mode", "alpha_uncond", "cfg_scale", "screen", "vs screen best (95% CI)",
        "contend", "selection success (95% CI)",
    ]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in table.to_dict("records"):
        contend = (
            f"{r['contend_successes']}/{r['contend_n']}" if r["contender"] else "not in contention"
        )
        lines.append(
            "| "
            + " | ".join(
                [
                    ("**chosen** " if r["best"] else "") + r["cond_mode"],
                    f"{r['alpha_uncond']:g}",
                    f"{r['cfg_scale']:g}",
                    f"{r['screen_successes']}/{r['screen_n']}",
                    f"{r['diff_vs_screen_best']:+.2f} "
                    f"[{r['diff_ci95_low']:+.2f}, {r['diff_ci95_high']:+.2f}]",
                    contend,
                    f"{success_cell(r)}, n = {r['n']}",
                ]
            )
            + " |"
        )
    lines += [
        "",
        "Selection episodes only (eval_schedule: adaptive): every grid point ran the screen; "
        "the points whose paired 95% interval to the screen's best did not exclude 0 (at most "
        "max_contenders) also ran the contend episodes; the chosen point has the most "
        "successes over all its selection episodes. Its comparison with the base is in "
        "sweep.md, on evaluation episodes that took no part in this choice.",
    ]
    return "\n".join(lines) + "\n"


def write_selection(
    screen: list[str | Path], contend: list[str | Path], csv_out: str | Path, md_out: str | Path
) -> pd.DataFrame:
    table = selection_table(screen, contend)
    write_texts({csv_out: table.to_csv(index=False), md_out: selection_markdown(table)})
    return table
