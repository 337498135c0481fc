"""Facts about the LIBERO suites that are needed before the simulator is imported."""

# Task counts of the standard suites and the per-suite episode limits that openpi uses to
# evaluate pi0 on LIBERO (examples/libero/main.py: spatial 220, object 280, goal 300,
# libero_10 520, libero_90 400).
SUITE_NUM_TASKS: dict[str, int] = {
    "libero_spatial": 10,
    "libero_object": 10,
    "libero_goal": 10,
    "libero_10": 10,
    "libero_90": 90,
}
SUITE_MAX_EPISODE_LENGTH: dict[str, int] = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
NUM_FIXED_INIT_STATES = 50
# Suites the scripted demonstrator (ript.envs.expert: pick an object, place it in the basket)
# was written for; every other suite needs a pretrained policy.
EXPERT_SUITES = ("libero_object",)


def check_suite_task(suite: str, task_id: int) -> None:
    """Fail with the valid choices listed, before any simulator work starts."""
    if suite not in SUITE_NUM_TASKS:
        raise ValueError(f"unknown LIBERO suite {suite!r}; valid suites: {sorted(SUITE_NUM_TASKS)}")
    n = SUITE_NUM_TASKS[suite]
    if not 0 <= task_id < n:
        raise ValueError(
            f"unknown task id {task_id} for suite {suite!r}; valid task ids: 0..{n - 1}"
        )


def max_episode_length(suite: str, configured: int | None) -> int:
    """The configured limit wins; the suite default applies only when none was given."""
    return configured if configured is not None else SUITE_MAX_EPISODE_LENGTH[suite]
