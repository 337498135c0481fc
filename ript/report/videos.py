"""`ript videos`: one page with a success and a failure video of every evaluated policy.

Numbers say how often a policy succeeds; a video says how it fails. The page takes the first
recorded success and the first recorded failure of each evaluation (its first `n_video`
episodes are recorded) and embeds them, so the page is one self-contained file that
`snakemake --report` shows as it is and that can be mailed around. A policy whose recorded
episodes all succeeded (or all failed) shows the one outcome it has, and says so.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

from ript.files import write_text_atomic
from ript.report.tables import load_metrics, metrics_row

OUTCOMES = ("success", "failure")


def policy_label(row: dict[str, Any]) -> str:
    if row["policy"] == "base":
        return "base"
    return (
        f"{row['cond_mode']}, alpha_uncond {row['alpha_uncond']:g}, cfg_scale {row['cfg_scale']:g}"
    )


def pick_videos(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The first recorded episode of each outcome: {'success': entry, 'failure': entry}."""
    picked: dict[str, dict[str, Any]] = {}
    for entry in metrics.get("videos", []):
        outcome = OUTCOMES[0] if entry["success"] else OUTCOMES[1]
        picked.setdefault(outcome, entry)
    return picked


def _video_tag(entry: dict[str, Any], outcome: str) -> str:
    path = Path(entry["path"])
    try:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
    except OSError as e:
        raise ValueError(f"{path}: a video listed in metrics.json cannot be read ({e})") from e
    caption = (
        f"{outcome}: task {entry['task']}, init state {entry['init_state']}, "
        f"rollout {entry['rollout']}"
    )
    return (
        f'<figure><video controls loop muted width="256" src="data:video/mp4;base64,{data}">'
        f"</video><figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def write_video_page(metrics_paths: list[str | Path], out: str | Path) -> int:
    """Write the page; return how many videos it shows."""
    sections, shown = [], 0
    for path in metrics_paths:
        metrics = load_metrics(path)
        label = html.escape(policy_label(metrics_row(path, metrics)))
        picked = pick_videos(metrics)
        if not picked:
            body = "<p>no episode of this evaluation was recorded (n_video: 0)</p>"
        else:
            missing = [o for o in OUTCOMES if o not in picked]
            body = "".join(_video_tag(picked[o], o) for o in OUTCOMES if o in picked)
            if missing:
                n = len(metrics["videos"])
                body += f"<p>no {missing[0]} among the {n} recorded episodes</p>"
            shown += len(picked)
        sections.append(f"<section><h2>{label}</h2><p><code>{html.escape(str(path))}</code></p>"
                        f"<div class='row'>{body}</div></section>")  # fmt: skip
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>ript: episode videos</title>"
        "<style>body{font-family:sans-serif;margin:1em} .row{display:flex;gap:1em} "
        "figure{margin:0} figcaption{font-size:90%}</style></head><body>"
        "<h1>One success and one failure per policy</h1>" + "".join(sections) + "</body></html>\n"
    )
    write_text_atomic(out, page)
    return shown
