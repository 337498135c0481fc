"""LIBERO observations in the form openpi feeds pi0 (examples/libero/main.py)."""

from __future__ import annotations

from typing import Any

import numpy as np

ACTION_DIM = 7
# openpi's LIBERO dummy action: no motion, gripper open.
DUMMY_ACTION = np.array([0.0] * 6 + [-1.0])
# Objects of interest whose poses (pos 3 + quat 4) form `privileged_object_state`;
# LIBERO tasks name at most four (libero_10), fewer are zero-padded so the width is fixed.
MAX_PRIVILEGED_OBJECTS = 4
PRIVILEGED_DIM = 7 * MAX_PRIVILEGED_OBJECTS


def quat2axisangle(quat: np.ndarray) -> np.ndarray:
    """Axis-angle (3,) of an (x, y, z, w) quaternion, as robosuite's transform_utils does it."""
    quat = np.asarray(quat, dtype=np.float64).copy()
    quat[3] = np.clip(quat[3], -1.0, 1.0)
    den = np.sqrt(1.0 - quat[3] * quat[3])
    if np.isclose(den, 0.0):
        return np.zeros(3)
    return quat[:3] * 2.0 * np.arccos(quat[3]) / den


def flip_image(image: np.ndarray) -> np.ndarray:
    """Rotate by 180 degrees: LIBERO renders upside down relative to the training data."""
    return np.ascontiguousarray(image[::-1, ::-1])


def adapt_observation(
    raw: dict[str, Any],
    *,
    cameras: bool,
    object_poses: list[np.ndarray] | None,
) -> dict[str, np.ndarray]:
    """Turn a raw robosuite observation into the arrays the policy and the episode store use.

    Keys follow LIBERO's demo layout (`ee_pos`, `ee_ori`, `gripper_states`, `joint_states`,
    `agentview_rgb`, `eye_in_hand_rgb`) plus `state`, the 8-dim pi0 LIBERO state.
    """
    ee_pos = np.asarray(raw["robot0_eef_pos"], dtype=np.float64)
    ee_ori = quat2axisangle(raw["robot0_eef_quat"])
    gripper = np.asarray(raw["robot0_gripper_qpos"], dtype=np.float64)
    obs: dict[str, np.ndarray] = {
        "state": np.concatenate([ee_pos, ee_ori, gripper]).astype(np.float32),
        "ee_pos": ee_pos.astype(np.float32),
        "ee_ori": ee_ori.astype(np.float32),
        "gripper_states": gripper.astype(np.float32),
        "joint_states": np.asarray(raw["robot0_joint_pos"], dtype=np.float32),
    }
    if cameras:
        obs["agentview_rgb"] = flip_image(raw["agentview_image"])
        obs["eye_in_hand_rgb"] = flip_image(raw["robot0_eye_in_hand_image"])
    if object_poses is not None:
        obs["privileged_object_state"] = privileged_object_state(object_poses)
        # object positions relative to the gripper: what a low-dim policy must otherwise
        # learn to subtract, and what grasping depends on
        relative = np.zeros((MAX_PRIVILEGED_OBJECTS, 3), dtype=np.float32)
        for i, pose in enumerate(object_poses):
            relative[i] = np.asarray(pose[:3]) - ee_pos
        obs["privileged_object_relative"] = relative.reshape(-1)
    return obs


def privileged_object_state(object_poses: list[np.ndarray]) -> np.ndarray:
    """Concatenated (pos 3, quat xyzw 4) poses, zero-padded to MAX_PRIVILEGED_OBJECTS."""
    if len(object_poses) > MAX_PRIVILEGED_OBJECTS:
        raise ValueError(
            f"task has {len(object_poses)} objects of interest; at most "
            f"{MAX_PRIVILEGED_OBJECTS} fit in privileged_object_state"
        )
    out = np.zeros(PRIVILEGED_DIM, dtype=np.float32)
    for i, pose in enumerate(object_poses):
        out[7 * i : 7 * i + 7] = pose
    return out
