"""Parallel LIBERO rollouts: spawn-started simulator workers serving batched policy calls.

The main process owns the policy; each worker owns the simulators of the tasks it has
seen and executes the first `replan_steps` actions of each chunk open-loop. Two engines
decide when the policy is called:

- `lockstep`: every round, all live episodes send their latest observation to one batched
  call, so the policy waits for the slowest simulator and the simulators wait for the policy.
  The batches are the same on every run, which keeps a run bit-reproducible on one machine.
- `async`: the policy serves whichever episodes are ready: after the first observation
  arrives it waits at most `max_wait_ms` for more (or until every outstanding one is in, or
  `max_batch` are), while the other simulators keep stepping. A batch's composition then
  depends on timing; an episode's actions do not, as long as the policy's output for one row
  does not depend on the other rows (true of the expert and of seeded policies; a neural
  policy only up to floating-point batch effects, which its fixed padded batch sizes reduce).

A worker that dies (or stays silent past `worker_timeout_s`) is restarted and its episode
is re-run from the start with the same seed, so a collection returns exactly the episodes
asked for, with either engine.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing as mp
import os
import signal
import threading
import time
import traceback
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np
from tqdm import tqdm

from ript.envs.episode import Episode, EpisodeSpec, PolicyRequest, RolloutPolicy
from ript.envs.libero_env import LiberoEnv, make_env, prepare_process_environment
from ript.envs.observation import ACTION_DIM

log = logging.getLogger(__name__)
_logged_start_method = False
MAX_EPISODE_RESTARTS = 3
# Memory of one simulator worker: 1.7 GiB unique (psutil USS) for a LIBERO-Object task, low-dim
# or with two 128 px cameras alike, measured on the 2-core development machine.
WORKER_MEMORY_BYTES = int(1.8 * 2**30)


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes; None where there is no such file."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def usable_workers(requested: int, num_episodes: int) -> int:
    """`requested` workers, capped (with a warning) by the episodes to run, the CPU cores this
    process may use and the memory available: more simulators than cores only wait for each
    other, and more than the memory holds get the machine killed."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    limits = {f"{num_episodes} episodes": max(num_episodes, 1), f"{cores} CPU cores": cores or 1}
    memory = available_memory()
    if memory is not None:
        fit = max(1, memory // WORKER_MEMORY_BYTES)
        gib = f"{memory / 2**30:.1f} GiB available, ~{WORKER_MEMORY_BYTES / 2**30:.1f} GiB each"
        limits[f"memory for {fit} simulators ({gib})"] = fit
    usable = min(requested, *limits.values())
    if usable < requested:
        log.warning("num_parallel_envs %d capped to %d: %s", requested, usable, ", ".join(limits))
    return usable


@dataclass
class _Buffer:
    spec: EpisodeSpec
    language: str
    obs: list[dict[str, np.ndarray]]
    states: list[np.ndarray]
    frames: list[np.ndarray] | None
    actions: list[np.ndarray] = field(default_factory=list)
    rewards: list[float] = field(default_factory=list)
    success: bool = False
    keep: bool = True  # every observation and simulator state, or only the latest

    def observe(self, obs: dict[str, np.ndarray], state: np.ndarray) -> None:
        if not self.keep:  # an evaluation whose episodes are not stored holds one frame
            self.obs.clear()
            self.states.clear()
        self.obs.append(obs)
        self.states.append(state)

    def finish(self) -> Episode:
        t = len(self.actions)
        dones = np.zeros(t, dtype=np.uint8)
        dones[-1] = 1
        kept = self.obs[:t] if self.keep else []
        return Episode(
            spec=self.spec,
            language=self.language,
            obs={k: np.stack([o[k] for o in kept]) for k in (kept[0] if kept else {})},
            actions=np.asarray(self.actions, dtype=np.float32),
            rewards=np.asarray(self.rewards, dtype=np.float32),
            dones=dones,
            states=np.stack(self.states[:t]) if self.keep else np.zeros((0, 0)),
            success=self.success,
            frames=self.frames,
        )


@dataclass
class _Run:
    """The bookkeeping of one `EnvPool.run`, shared by the steps of its loop."""

    pending: deque[EpisodeSpec]
    keep_observations: bool
    bar: tqdm
    restarts: dict[int, int] = field(default_factory=dict)  # episode_index -> worker restarts
    finished: dict[int, Episode] = field(default_factory=dict)


@dataclass
class RolloutStats:
    episodes: int = 0
    successes: int = 0
    env_steps: int = 0
    wall_seconds: float = 0.0
    worker_restarts: int = 0

    @property
    def env_steps_per_second(self) -> float:
        return self.env_steps / self.wall_seconds if self.wall_seconds else 0.0


# ---------------------------------------------------------------------------------------
# worker side


def _worker_main(
    conn: Connection,
    env_kwargs: dict[str, Any],
    render_source: str,
    max_cached_envs: int,
    render_gpu: str | None,
    worker_nice: int,
) -> None:
    # Simulator chatter goes to stderr; stdout stays the command's own (tables, summaries).
    os.dup2(2, 1)
    os.nice(worker_nice)
    if render_gpu is not None:  # read by robosuite's EGL context; a user's own setting wins
        os.environ.setdefault("MUJOCO_EGL_DEVICE_ID", render_gpu)
    prepare_process_environment()
    envs: OrderedDict[tuple[str, int], LiberoEnv] = OrderedDict()  # least recently used first
    env: LiberoEnv | None = None
    record = False

    def frame(obs: dict[str, np.ndarray]) -> np.ndarray | None:
        if not record:
            return None
        return obs["agentview_rgb"] if render_source == "obs" else env.render()

    try:
        while True:
            cmd, payload = conn.recv()
            if cmd == "close":
                break
            try:
                if cmd == "start":
                    spec: EpisodeSpec = payload
                    key = (spec.suite, spec.task_id)
                    if key not in envs:
                        while len(envs) >= max_cached_envs:
                            envs.popitem(last=False)[1].close()
                        envs[key] = make_env(spec.suite, spec.task_id, **env_kwargs)
                    envs.move_to_end(key)
                    env = envs[key]
                    record = spec.record_video
                    obs = env.reset(seed=spec.reset_seed, init_state_index=spec.init_state_index)
                    conn.send(("started", (env.task.language, obs, env.sim_state(), frame(obs))))
                elif cmd == "step":
                    # Without `keep_all` (an evaluation that stores no episodes) only the
                    # chunk's last observation travels back: a fifth of the pipe traffic.
                    actions, keep_all = payload
                    transitions = []
                    for i, action in enumerate(actions):
                        result = env.step(action)
                        last = result.done or i == len(actions) - 1
                        kept = keep_all or last
                        transitions.append(
                            (
                                result.obs if kept else None,
                                result.reward,
                                result.success,
                                result.done,
                                env.sim_state() if keep_all else None,
                                frame(result.obs),
                            )
                        )
                        if result.done:
                            break
                    conn.send(("stepped", transitions))
                else:
                    raise ValueError(f"unknown worker command {cmd!r}")
            except Exception:  # noqa: BLE001 - reported to the main process, which raises
                conn.send(("error", traceback.format_exc()))
    except (EOFError, KeyboardInterrupt):
        pass
    finally:
        for e in envs.values():
            e.close()
        conn.close()
    # Skip interpreter finalisers: EGL contexts torn down at exit print spurious tracebacks.
    os._exit(0)


class _Worker:
    def __init__(self, ctx: Any, args: tuple[Any, ...]) -> None:
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_worker_main, args=(child, *args), daemon=True)
        # Ctrl-C reaches every process of the terminal's group: the main process closes the
        # workers, which start with SIGINT ignored (kept across exec) so that none prints a
        # traceback of its own
        main_thread = threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
        try:
            self.process.start()
        finally:
            if main_thread:
                signal.signal(signal.SIGINT, previous)
        child.close()
        self.buffer: _Buffer | None = None
        self.awaiting: str | None = None  # "start" or "step" while a reply is due
        self.pending_chunk: np.ndarray | None = None  # the actions of the last "step"
        self.sent_at = 0.0
        self.replied_at = 0.0

    def send(self, cmd: str, payload: Any) -> None:
        # A worker that died since its last reply breaks the pipe here; the reply is still
        # marked due, so the gather that waits for it sees EOF and restarts the worker.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.conn.send((cmd, payload))
        self.awaiting = cmd
        if cmd == "step":
            self.pending_chunk = payload[0]
        self.sent_at = time.monotonic()

    def close(self, timeout: float = 10.0) -> None:
        with contextlib.suppress(BrokenPipeError, OSError):
            self.conn.send(("close", None))
        self.process.join(timeout)
        if self.process.is_alive():
            self.process.kill()
            self.process.join()
        self.conn.close()


ENGINES = ("lockstep", "async")


class EnvPool:
    """N simulator workers serving a queue of episodes."""

    def __init__(
        self,
        num_workers: int,
        *,
        max_episode_length: int,
        num_steps_wait: int,
        replan_steps: int,
        cameras: bool,
        image_size: int,
        privileged_object_state: bool,
        render_source: str = "obs",
        env_create_retries: int = 3,
        worker_timeout_s: float = 300.0,
        max_cached_envs: int = 4,
        engine: str = "lockstep",
        max_batch: int | None = None,
        max_wait_ms: float = 5.0,
        hard_reset: bool = False,
        render_gpu: str | None = None,
        worker_nice: int = 0,
    ) -> None:
        """`max_cached_envs`: simulators a worker keeps across tasks (each holds a compiled
        model, and a renderer with cameras); the least recently used is closed beyond it.
        `engine`, `max_batch` (default: all workers) and `max_wait_ms`: see the module.
        `render_gpu`: the EGL device the workers render on (`ript.gpus.egl_device_id`);
        None leaves it to robosuite (the first GPU). `worker_nice`: the workers' niceness
        (`benchmarks/env_throughput.py --worker-nice`: whether the policy process lacks CPU)."""
        global _logged_start_method
        if num_workers < 1:
            raise ValueError(f"num_workers must be >= 1, got {num_workers}")
        if engine not in ENGINES:
            raise ValueError(f"engine {engine!r}: expected one of {ENGINES}")
        if max_batch is not None and max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.engine = engine
        self.max_batch = max_batch or num_workers
        self.max_wait_s = max_wait_ms / 1e3
        self.replan_steps = replan_steps
        self.worker_timeout_s = worker_timeout_s
        self._worker_args = (
            dict(
                max_episode_length=max_episode_length,
                num_steps_wait=num_steps_wait,
                cameras=cameras,
                image_size=image_size,
                privileged_object_state=privileged_object_state,
                offscreen_render=render_source == "render",
                hard_reset=hard_reset,
                retries=env_create_retries,
            ),
            render_source,
            max_cached_envs,
            render_gpu,
            worker_nice,
        )
        prepare_process_environment()
        if not _logged_start_method:
            log.info(
                "[EnvPool] num_parallel_envs=%d, start method spawn (process default: %s)",
                num_workers,
                mp.get_start_method(allow_none=True),
            )
            _logged_start_method = True
        self._ctx = mp.get_context("spawn")
        self._workers = [self._new_worker() for _ in range(num_workers)]
        self.stats = RolloutStats()

    def _new_worker(self) -> _Worker:
        return _Worker(self._ctx, self._worker_args)

    @property
    def worker_pids(self) -> list[int]:
        return [w.process.pid for w in self._workers]

    def __enter__(self) -> EnvPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for w in self._workers:
            w.close()
        self._workers = []

    # -----------------------------------------------------------------------------------

    def run(
        self,
        specs: list[EpisodeSpec],
        policy: RolloutPolicy,
        *,
        progress: bool = True,
        desc: str = "rollouts",
        keep_observations: bool = True,
    ) -> list[Episode]:
        """Roll out every spec once; episodes come back in `episode_index` order. Without
        `keep_observations` they hold no observations or simulator states (an evaluation
        that stores no episodes: with cameras those run to gigabytes); videos are kept."""
        if len({s.episode_index for s in specs}) != len(specs):
            raise ValueError("episode specs must have distinct episode_index values")
        self._discard_unfinished()
        start = time.monotonic()
        bar = tqdm(total=len(specs), desc=desc, disable=not progress, unit="ep")
        run = _Run(deque(specs), keep_observations, bar)
        try:
            while run.pending or any(w.buffer is not None for w in self._workers):
                self._start_episodes(run)
                if self.engine == "lockstep":
                    self._gather(run)
                    batch = [w for w in self._workers if w.buffer is not None]
                else:
                    batch = self._gather_ready(run)
                if not batch:
                    continue
                chunks = self._call_policy(policy, batch)
                for w, chunk in zip(batch, chunks, strict=True):
                    w.send("step", (chunk[: self.replan_steps], keep_observations))
                if self.engine == "lockstep":
                    self._gather(run)
        finally:
            bar.close()
        self.stats.wall_seconds += time.monotonic() - start
        order = sorted(specs, key=lambda s: s.episode_index)
        return [run.finished[s.episode_index] for s in order]

    def _start_episodes(self, run: _Run) -> None:
        for w in self._workers:
            if w.buffer is None and w.awaiting is None and run.pending:
                spec = run.pending.popleft()
                frames = [] if spec.record_video else None
                w.buffer = _Buffer(spec, "", [], [], frames, keep=run.keep_observations)
                w.send("start", spec)

    def _ready(self) -> list[_Worker]:
        """Workers whose episode waits for actions, longest-waiting first."""
        ready = [w for w in self._workers if w.buffer is not None and w.awaiting is None]
        return sorted(ready, key=lambda w: w.replied_at)

    def _gather_ready(self, run: _Run) -> list[_Worker]:
        """The next batch of the async engine: wait for a first ready episode, then at most
        `max_wait_s` for more, returning early once `max_batch` are ready or no reply is due.
        Returns (possibly empty) as soon as a worker is free for a pending episode, so the
        caller starts it without waiting for the batch."""
        deadline = None
        while True:
            ready = self._ready()
            if len(ready) >= self.max_batch:
                return ready[: self.max_batch]
            if not any(w.awaiting is not None for w in self._workers):
                return ready
            free = any(w.buffer is None and w.awaiting is None for w in self._workers)
            if run.pending and free:
                return ready
            now = time.monotonic()
            if ready:
                deadline = deadline or now + self.max_wait_s
                if now >= deadline:
                    return ready
            timeout = 1.0 if deadline is None else deadline - now
            self._poll(timeout, run)

    def _discard_unfinished(self) -> None:
        """Forget episodes of an earlier run that was aborted (e.g. by a policy error)."""
        for i, w in enumerate(self._workers):
            if w.awaiting is not None:  # a reply is still in flight: start afresh
                w.close(timeout=1.0)
                self._workers[i] = self._new_worker()
            else:
                w.buffer = None

    def _call_policy(self, policy: RolloutPolicy, live: list[_Worker]) -> np.ndarray:
        requests = [
            PolicyRequest(w.buffer.obs[-1], w.buffer.language, w.buffer.spec, len(w.buffer.actions))
            for w in live
        ]
        chunks = np.asarray(policy.act(requests), dtype=np.float64)
        if chunks.ndim != 3 or chunks.shape[0] != len(live) or chunks.shape[2] != ACTION_DIM:
            raise ValueError(
                f"policy {policy.policy_id!r} returned actions of shape {chunks.shape}; "
                f"expected ({len(live)}, chunk_len, {ACTION_DIM})"
            )
        if not np.isfinite(chunks).all():
            raise ValueError(f"policy {policy.policy_id!r} returned non-finite actions")
        return chunks

    def _gather(self, run: _Run) -> None:
        """Wait for every outstanding reply; restart workers that died on the way."""
        while any(w.awaiting is not None for w in self._workers):
            self._poll(1.0, run)

    def _poll(self, timeout: float, run: _Run) -> None:
        """Take the replies that arrive within `timeout` s; restart dead or silent workers."""
        waiting = {w.conn: w for w in self._workers if w.awaiting is not None}
        for conn in wait(list(waiting), timeout=max(timeout, 0.0)):
            w = waiting[conn]
            try:
                kind, payload = conn.recv()
            except (EOFError, ConnectionResetError, OSError):
                self._restart(w, run, "died")
                continue
            w.awaiting = None
            w.replied_at = time.monotonic()
            if kind == "error":
                raise RuntimeError(f"simulator worker failed:\n{payload}")
            self._absorb(w, kind, payload, run)
        now = time.monotonic()
        for w in waiting.values():
            live = w in self._workers  # not replaced above after dying
            if live and w.awaiting is not None and now - w.sent_at > self.worker_timeout_s:
                self._restart(w, run, f"was silent for {self.worker_timeout_s}s")

    def _absorb(self, w: _Worker, kind: str, payload: Any, run: _Run) -> None:
        buf = w.buffer
        if kind == "started":
            buf.language, obs, state, frame = payload
            buf.observe(obs, state)
            if buf.frames is not None:
                buf.frames.append(frame)
            return
        for (obs, reward, success, done, state, frame), action in zip(
            payload, w.pending_chunk, strict=False
        ):
            buf.actions.append(np.asarray(action, dtype=np.float32))
            buf.rewards.append(reward)
            buf.success = buf.success or success
            if obs is not None:
                buf.observe(obs, state)
            if buf.frames is not None:
                buf.frames.append(frame)
            self.stats.env_steps += 1
            if done:
                episode = buf.finish()
                run.finished[episode.spec.episode_index] = episode
                w.buffer = None
                self.stats.episodes += 1
                self.stats.successes += int(episode.success)
                run.bar.update(1)
                run.bar.set_postfix(success=f"{self.stats.successes}/{self.stats.episodes}")
                return

    def _restart(self, w: _Worker, run: _Run, why: str) -> None:
        spec = w.buffer.spec if w.buffer is not None else None
        log.warning("[EnvPool] worker pid %s %s; restarting it", w.process.pid, why)
        w.process.kill()
        w.process.join()
        w.conn.close()
        self.stats.worker_restarts += 1
        idx = self._workers.index(w)
        self._workers[idx] = self._new_worker()
        if spec is not None:
            n = run.restarts.get(spec.episode_index, 0) + 1
            run.restarts[spec.episode_index] = n
            if n > MAX_EPISODE_RESTARTS:
                raise RuntimeError(
                    f"episode {spec.episode_index} ({spec.suite} task {spec.task_id}, init state "
                    f"{spec.init_state_index}) lost its worker {n} times; giving up"
                )
            log.warning("[EnvPool] re-running episode %d from its start", spec.episode_index)
            run.pending.appendleft(spec)
