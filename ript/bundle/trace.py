"""Which asset files a suite's tasks load: the only ones an offline bundle needs.

LIBERO and robosuite ship ~1.2 GB of meshes and textures for all their tasks; one
LIBERO-Object task loads about a hundred files. Python reads the scene and object XMLs
(seen by an audit hook on `open`); MuJoCo's C code reads the meshes and textures that the
compiled model names (read from the model's XML, whose asset paths robosuite makes absolute).
Each task is built, reset on its first init state and stepped once with cameras on, in a
fresh spawned process so that nothing was imported before the hook.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

_FILE_ATTRIBUTE = re.compile(r'\bfile="([^"]+)"')


def _trace_in_this_process(suite: str, task_ids: list[int]) -> list[str]:
    opened: set[str] = set()

    def hook(event: str, args: tuple) -> None:
        if event == "open" and isinstance(args[0], str | bytes | os.PathLike):
            opened.add(os.path.realpath(os.fsdecode(args[0])))

    sys.addaudithook(hook)
    from ript.envs.libero_env import make_env
    from ript.envs.observation import DUMMY_ACTION

    for task_id in task_ids:
        env = make_env(suite, task_id, max_episode_length=2, cameras=True, image_size=64)
        try:
            env.reset(seed=0, init_state_index=0)
            env.step(DUMMY_ACTION)
            xml = env.sim.model.get_xml()
            opened.update(os.path.realpath(p) for p in _FILE_ATTRIBUTE.findall(xml))
        finally:
            env.close()
    return sorted(p for p in opened if os.path.isfile(p))


def loaded_files(suite: str, task_ids: list[int]) -> set[Path]:
    """Every file that building, resetting and stepping these tasks reads (real paths)."""
    with ProcessPoolExecutor(1, mp_context=mp.get_context("spawn")) as pool:
        return {Path(p) for p in pool.submit(_trace_in_this_process, suite, task_ids).result()}
