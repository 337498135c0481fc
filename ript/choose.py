"""`ript choose`: the model the next round collects with (`rounds: N`, RIPT-style iteration).

Round r + 1 starts from the grid point marked best in round r's sweep table (eval_schedule
full) or selection table (adaptive, `ript select`): its trained policy, sampled at its
cfg_scale. The chosen policy directory is a hard-linked copy of the trained one
(π0's weights are not copied; a plain copy where links are impossible) whose policy.json
carries the chosen cfg_scale, so every step that loads it without --cfg-scale samples the
way it was evaluated; choice.json beside it records the chosen row.

With eval_schedule full the choice is made on the evaluation init states, so later rounds'
numbers on those init states include a selection effect (the rounds table says so); adaptive
chooses on selection episodes and keeps the evaluation init states for the comparison.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

from ript.checkpoint import CHECKPOINT_FILES, POLICY_FILE, missing_files
from ript.files import atomic_output, write_text_atomic
from ript.report.tables import best_row, read_table

CHOICE_COLUMNS = [
    "cond_mode", "alpha_uncond", "cfg_scale", "success_rate", "ci95_low", "ci95_high",
]  # fmt: skip


# Snakemake's marker in a directory output: it touches the marker when the job ends, so a
# linked marker would make the trained policy look newer than everything evaluated from it
# (and the next run would redo those evaluations).
NOT_LINKED = {".snakemake_timestamp"}


def link_tree(source: Path, target: Path) -> None:
    """`target` as hard links to the files of `source` (copies across file systems)."""
    target.mkdir(parents=True)
    for item in source.iterdir():
        if item.name in NOT_LINKED:
            continue
        if item.is_dir():
            link_tree(item, target / item.name)
            continue
        try:
            os.link(item, target / item.name)
        except OSError:
            shutil.copy2(item, target / item.name)


def choose(table_csv: str | Path, out: str | Path) -> dict[str, Any]:
    """Write `out`/policy (the chosen policy at its cfg_scale) and `out`/choice.json."""
    required = {"policy", "best", "metrics", "n", *CHOICE_COLUMNS}
    row = best_row(read_table(table_csv, required, "a sweep or selection table"), table_csv)
    metrics_path = Path(row["metrics"])
    try:
        source = Path(json.loads(metrics_path.read_text())["settings"]["policy"])
    except (OSError, json.JSONDecodeError, KeyError) as e:
        raise ValueError(f"{metrics_path}: no policy path in its settings ({e})") from e
    absent = missing_files(source, (*CHECKPOINT_FILES, POLICY_FILE))
    if absent:
        raise ValueError(f"{source}: the best grid point's policy lacks {absent}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_output(out / "policy") as tmp:
        link_tree(source, tmp)
        settings = json.loads((source / POLICY_FILE).read_text())
        settings["cfg_scale"] = float(row["cfg_scale"])
        (tmp / POLICY_FILE).unlink()  # a new file: the link's target, the trained policy, stays
        (tmp / POLICY_FILE).write_text(json.dumps(settings, indent=2))
    choice = {
        "policy": str(source),
        "cond_mode": row["cond_mode"],
        "alpha_uncond": float(row["alpha_uncond"]),
        "cfg_scale": float(row["cfg_scale"]),
        "success_rate": float(row["success_rate"]),
        "ci95_low": float(row["ci95_low"]),
        "ci95_high": float(row["ci95_high"]),
        "n": int(row["n"]),
        "table": str(table_csv),
    }
    write_text_atomic(out / "choice.json", json.dumps(choice, indent=2) + "\n")
    return choice
