import json

import pytest
from helpers import write_metrics

from ript.report.videos import pick_videos, write_video_page


def with_videos(path, tmp_path, outcomes):
    """Add recorded videos (fake mp4 bytes) of the first episodes to a metrics.json."""
    m = json.loads(path.read_text())
    m["videos"] = []
    for i, success in enumerate(outcomes):
        video = tmp_path / f"videos/{path.stem}_{i}.mp4"
        video.parent.mkdir(exist_ok=True)
        video.write_bytes(f"{path.stem} {i}".encode())
        m["videos"].append(
            {"task": 0, "init_state": i, "rollout": 0, "success": success, "path": str(video)}
        )
    path.write_text(json.dumps(m))
    return path


def test_the_first_success_and_the_first_failure_are_picked():
    metrics = {"videos": [{"success": s, "init_state": i} for i, s in enumerate([1, 0, 1, 0])]}
    picked = pick_videos(metrics)
    assert (picked["success"]["init_state"], picked["failure"]["init_state"]) == (0, 1)
    assert pick_videos({"videos": []}) == {} and pick_videos({}) == {}


def test_page_shows_each_policy_and_says_what_is_missing(tmp_path):
    base = tmp_path / write_metrics(tmp_path / "eval/base.json", [True, False])
    point = write_metrics(tmp_path / "eval/cfg2.json", [True, True], {"mode": "cfg",
                          "cond_mode": "bias", "alpha_uncond": 0.1}, 2.0)  # fmt: skip
    silent = write_metrics(tmp_path / "eval/cfg3.json", [False], {"mode": "cfg",
                           "cond_mode": "bias", "alpha_uncond": 0.1}, 3.0)  # fmt: skip
    with_videos(base, tmp_path, [True, False])
    with_videos(tmp_path / point, tmp_path, [True, True])
    out = tmp_path / "videos.html"
    assert write_video_page([base, point, silent], out) == 3
    page = out.read_text()
    assert page.count("<video") == 3 and page.count("<section>") == 3
    assert "bias, alpha_uncond 0.1, cfg_scale 2" in page
    assert "no failure among the 2 recorded episodes" in page
    assert "no episode of this evaluation was recorded" in page


def test_a_listed_video_that_is_gone_is_named(tmp_path):
    base = tmp_path / write_metrics(tmp_path / "eval/base.json", [True])
    with_videos(base, tmp_path, [True])
    (tmp_path / "videos/base_0.mp4").unlink()
    with pytest.raises(ValueError, match="base_0.mp4: a video listed in metrics.json"):
        write_video_page([base], tmp_path / "videos.html")
    assert not (tmp_path / "videos.html").exists()
