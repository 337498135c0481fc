"""A scripted pick-and-place demonstrator for LIBERO-Object, acting through the policy interface.

It reads the privileged poses of the task's two objects of interest (the object named in
the instruction, then the basket) and drives the OSC_POSE controller with proportional
moves: hover over the object, descend, close, lift, carry over the basket, lower, open.
It keeps no memory: the phase follows from the observation, so it re-plans every step
and recovers from a missed grasp by re-opening and approaching again.

Two noise knobs set its success rate (reported per task by `ript collect`):
`action_noise` (std of Gaussian noise on the normalised pose actions) and `grasp_offset`
(std in metres of a per-episode horizontal offset of the grasp point). Both are drawn from
the episode seed, so a rollout is reproducible.
"""

from __future__ import annotations

import numpy as np

from ript.envs.episode import PolicyRequest

# OSC_POSE maps an action of 1 to 5 cm; a move of GAIN metres saturates the action.
GAIN = 0.02
HOVER_HEIGHT = 0.12  # above the object before descending
CARRY_HEIGHT = 0.30  # while moving to the basket
RELEASE_HEIGHT = 0.15  # above the basket origin
GRASP_DEPTH = 0.02  # grasp point above the object origin
XY_TOLERANCE = 0.01
GRIPPER_OPEN, GRIPPER_CLOSE = -1.0, 1.0
# Finger gap (sum of the two finger joints) between "fully closed" and "fully open":
# inside it the fingers are stopped by something.
HOLDING_GAP = (0.002, 0.07)


def _toward(target: np.ndarray, eef: np.ndarray) -> np.ndarray:
    return np.clip((target - eef) / GAIN, -1.0, 1.0)


def expert_action(
    eef: np.ndarray,
    finger_qpos: np.ndarray,
    obj: np.ndarray,
    basket: np.ndarray,
    grasp_offset: np.ndarray,
) -> np.ndarray:
    """One action (7,) for the current state; positions are world-frame metres."""
    action = np.zeros(7)
    gap = float(finger_qpos[0] - finger_qpos[1])
    grasp = obj + np.array([grasp_offset[0], grasp_offset[1], GRASP_DEPTH])
    to_grasp = grasp - eef
    holding = (
        HOLDING_GAP[0] < gap < HOLDING_GAP[1]
        and np.linalg.norm((obj - eef)[:2]) < 0.03
        and abs(to_grasp[2]) < 0.04
    )
    if holding:
        action[6] = GRIPPER_CLOSE
        over_basket = np.linalg.norm(eef[:2] - basket[:2]) <= 2 * XY_TOLERANCE
        if over_basket:
            action[:3] = _toward(np.array([basket[0], basket[1], basket[2] + RELEASE_HEIGHT]), eef)
            if eef[2] < basket[2] + RELEASE_HEIGHT + 0.02:
                action[6] = GRIPPER_OPEN
        elif eef[2] < CARRY_HEIGHT - 0.03:
            action[2] = _toward(np.array([0, 0, CARRY_HEIGHT]), np.array([0, 0, eef[2]]))[2]
        else:
            action[:3] = _toward(np.array([basket[0], basket[1], CARRY_HEIGHT]), eef)
        return action

    action[6] = GRIPPER_OPEN
    xy_error = np.linalg.norm(to_grasp[:2])
    if xy_error > XY_TOLERANCE:
        hover = obj[2] + HOVER_HEIGHT
        if eef[2] < hover - 0.05 and xy_error > 3 * XY_TOLERANCE:
            target = np.array([eef[0], eef[1], hover])  # rise first, then move across
        else:
            target = np.array([grasp[0], grasp[1], hover])
        action[:3] = _toward(target, eef)
    elif eef[2] > grasp[2] + 0.01:
        action[:3] = _toward(grasp, eef)
    else:
        action[:3] = _toward(grasp, eef)
        action[6] = GRIPPER_CLOSE
    return action


class ScriptedExpert:
    """Batched rollout policy wrapping `expert_action`; returns chunks of one action."""

    def __init__(self, action_noise: float = 0.0, grasp_offset: float = 0.0) -> None:
        if action_noise < 0 or grasp_offset < 0:
            raise ValueError("expert noise levels must be >= 0")
        self.action_noise = action_noise
        self.grasp_offset = grasp_offset
        self.policy_id = f"expert(action_noise={action_noise:g},grasp_offset={grasp_offset:g})"

    def act(self, requests: list[PolicyRequest]) -> np.ndarray:
        out = np.zeros((len(requests), 1, 7))
        for i, req in enumerate(requests):
            if "privileged_object_state" not in req.obs:
                raise ValueError(
                    "the scripted expert needs `privileged_object_state` in the observation; "
                    "set privileged_object_state: true in the config"
                )
            objects = req.obs["privileged_object_state"].astype(np.float64)
            offset_rng = np.random.default_rng([req.episode.seed, 1])
            offset = offset_rng.normal(0.0, self.grasp_offset, size=2)
            action = expert_action(
                eef=req.obs["ee_pos"].astype(np.float64),
                finger_qpos=req.obs["gripper_states"],
                obj=objects[0:3],
                basket=objects[7:10],
                grasp_offset=offset,
            )
            if self.action_noise > 0:
                step_rng = np.random.default_rng([req.episode.seed, 2, req.step])
                action[:6] += step_rng.normal(0.0, self.action_noise, size=6)
            out[i, 0] = np.clip(action, -1.0, 1.0)
        return out
