"""`ript <step>`: one sub-command per pipeline step; each is a thin call into its module."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

import yaml

from ript.config import ConfigError, load_config


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _add_collect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("collect", help="roll a policy out on LIBERO and write one episode shard")
    p.add_argument("--config", help="experiment YAML (defaults from the schema when omitted)")
    p.add_argument(
        "--policy",
        default="expert",
        help="'expert' (the scripted demonstrator) or a policy checkpoint directory",
    )
    p.add_argument("--cfg-scale", type=float, default=1.0, help="guidance scale (policies)")
    p.add_argument("--out", required=True, help="output shard (.h5); its index goes beside it")
    p.add_argument("--suite", help="overrides config 'suite'")
    p.add_argument("--tasks", type=int, nargs="+", help="overrides config 'tasks'")
    p.add_argument(
        "--init-states",
        default="train",
        help="'train', 'eval' (the config's ranges) or START:STOP (half-open)",
    )
    p.add_argument("--rollouts-per-init", type=int, help="K; overrides config 'rollouts_per_init'")
    p.add_argument("--num-parallel-envs", type=int, help="overrides config 'num_parallel_envs'")
    p.add_argument("--max-episode-length", type=int, help="overrides config 'max_episode_length'")
    p.add_argument("--num-steps-wait", type=int, help="overrides config 'num_steps_wait'")
    p.add_argument("--seed", type=int, help="overrides config 'seed'")
    p.add_argument("--n-video", type=int, help="overrides config 'n_video'")
    p.add_argument("--video-dir", help="overrides config 'video_dir'")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_set(p)
    p.set_defaults(run=_run_collect)


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="settings",
        help="override any config key (VALUE is YAML, e.g. tasks=[0,3]); repeatable",
    )


def _parse_settings(settings: list[str]) -> dict[str, Any]:
    out = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {e}") from e
    return out


def _overrides(args: argparse.Namespace, keys: list[str]) -> dict[str, Any]:
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def _run_collect(args: argparse.Namespace) -> None:
    from ript.collect import collect, per_task_success, summary_line

    config = load_config(
        args.config,
        _parse_settings(args.settings)
        | _overrides(
            args,
            [
                "suite",
                "tasks",
                "rollouts_per_init",
                "num_parallel_envs",
                "max_episode_length",
                "num_steps_wait",
                "seed",
                "n_video",
                "video_dir",
            ],
        ),
    )
    episodes, stats = collect(
        config,
        policy_name=args.policy,
        out=args.out,
        init_states=args.init_states,
        cfg_scale=args.cfg_scale,
        progress=not args.no_progress,
    )
    print(per_task_success(episodes).to_string())
    print(f"collect: {args.out}: {summary_line(stats)}")


def _add_norm_stats(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("norm-stats", help="openpi norm_stats.json of state and actions")
    p.add_argument("--shards", nargs="+", required=True, help="episode shards (ours or LIBERO's)")
    p.add_argument(
        "--state-keys",
        nargs="+",
        default=["state"],
        help="observation keys concatenated into the policy state (in order)",
    )
    p.add_argument("--bins", type=int, default=5000, help="histogram bins per dimension")
    p.add_argument("--out", required=True, help="norm_stats.json to write")
    p.set_defaults(run=_run_norm_stats)


def _run_norm_stats(args: argparse.Namespace) -> None:
    from ript.data.norm_stats import compute_norm_stats

    stats, guarded = compute_norm_stats(args.shards, args.state_keys, bins=args.bins)
    stats.save(args.out)
    print(
        f"norm-stats: {args.out}: state {stats.state.dim} dims, actions {stats.actions.dim} "
        f"dims; guarded (near-constant) state dims {guarded['state']}, "
        f"action dims {guarded['actions']}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ript", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    _add_collect(sub)
    _add_norm_stats(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    try:
        args.run(args)
    except (ConfigError, ValueError, FileNotFoundError) as e:
        print(f"ript {args.step}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
