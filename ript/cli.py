"""`ript <step>`: one sub-command per pipeline step; each is a thin call into its module."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import yaml

from ript.config import ConfigError, load_config
from ript.files import OutputBusyError, WriteError
from ript.interrupt import Interrupted, install_interrupt_handlers
from ript.settings import (
    CfgSchedule,
    Collection,
    Evaluation,
    Expert,
    Grid,
    Inference,
    Labels,
    Model,
    Optimisation,
    Section,
    SftSchedule,
    Simulation,
    Tracking,
    Videos,
)
from ript.tracking import Tracker, tracked


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # per-save "Writing shards" bars


def _add_collect(sub: argparse._SubParsersAction) -> None:
    p = _step_parser(
        sub, "collect", "roll a policy out on LIBERO and write one episode shard", _run_collect
    )
    p.add_argument(
        "--policy",
        default="expert",
        help="'expert' (the scripted demonstrator) or a policy checkpoint directory",
    )
    p.add_argument(
        "--cfg-scale",
        type=float,
        help="guidance scale (policies; default: the checkpoint's policy.json, 1 unless chosen)",
    )
    p.add_argument("--out", required=True, help="output shard (.h5); its index goes beside it")
    p.add_argument("--suite", help="overrides config 'suite'")
    p.add_argument("--tasks", type=int, nargs="+", help="overrides config 'tasks'")
    p.add_argument(
        "--init-states",
        default="train",
        help="'train', 'eval' (the config's ranges) or START:STOP (half-open)",
    )
    p.add_argument(
        "--rollouts-per-init",
        type=int,
        help="rollouts per init state for this shard (default: config 'rollouts_per_init')",
    )
    p.add_argument("--num-parallel-envs", type=int, help="overrides config 'num_parallel_envs'")
    p.add_argument("--max-episode-length", type=int, help="overrides config 'max_episode_length'")
    p.add_argument("--num-steps-wait", type=int, help="overrides config 'num_steps_wait'")
    p.add_argument("--seed", type=int, help="overrides config 'seed'")
    p.add_argument("--n-video", type=int, help="overrides config 'n_video'")
    p.add_argument("--video-dir", help="overrides config 'video_dir'")


def _step_parser(
    sub: argparse._SubParsersAction, name: str, help: str, run: Callable
) -> argparse.ArgumentParser:
    """A step that reads the experiment config: --config, --set KEY=VALUE, --no-progress."""
    p = sub.add_parser(name, help=help)
    p.set_defaults(run=run)
    p.add_argument("--config", help="experiment YAML (defaults from the schema when omitted)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        dest="settings",
        help="override any config key (VALUE is YAML, e.g. tasks=[0,3]); repeatable",
    )
    p.add_argument(
        "--job-type",
        default=name,
        help=f"what the config's loggers call the job (the Snakemake rule; default: {name})",
    )
    return p


@contextlib.contextmanager
def _tracker(
    args: argparse.Namespace, config: dict[str, Any], sections: list[Section], **job: Any
) -> Iterator[Tracker]:
    """The job's tracker (`ript.tracking`), with the settings it ran with: its sections'
    keys and its own arguments. Only the first process of a torchrun job logs."""
    tracking = Tracking.of(config)
    loggers = tracking.loggers if int(os.environ.get("RANK", "0")) == 0 else ("csv",)
    settings = {k: v for section in sections for k, v in section.as_dict().items()}
    with tracked(
        loggers,
        experiment=tracking.experiment,
        out=args.out,
        job_type=args.job_type,
        settings=settings | job,
        wandb_mode=tracking.wandb_mode,
        wandb_project=tracking.wandb_project,
    ) as tracker:
        yield tracker


def _parse_settings(settings: list[str]) -> dict[str, Any]:
    out = {}
    for item in settings:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:  # JSON first: YAML 1.1 reads 1e-10 as a string
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            pass
        else:
            continue
        try:
            out[key] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {e}") from e
    return out


def _overrides(args: argparse.Namespace, keys: list[str]) -> dict[str, Any]:
    return {k: getattr(args, k) for k in keys if getattr(args, k) is not None}


def _policy_sections(policy: str, config: dict[str, Any]) -> dict[str, Expert | Inference]:
    """The settings of the policy a rollout step runs: the expert's or a checkpoint's."""
    return (
        {"expert": Expert.of(config)} if policy == "expert" else {"inference": Inference.of(config)}
    )


def _run_collect(args: argparse.Namespace) -> None:
    from ript.collect import collect
    from ript.rollouts import per_task_success, summary_line

    config = load_config(
        args.config,
        _parse_settings(args.settings)
        | _overrides(
            args,
            [
                "suite",
                "tasks",
                "num_parallel_envs",
                "max_episode_length",
                "num_steps_wait",
                "seed",
                "n_video",
                "video_dir",
            ],
        ),
    )
    sim, videos = Simulation.of(config), Videos.of(config)
    policy = _policy_sections(args.policy, config)
    # the shard's own K (demonstrations) or the config's
    per_init = args.rollouts_per_init or Collection.of(config).rollouts_per_init
    job = dict(policy=args.policy, init_states=args.init_states, cfg_scale=args.cfg_scale)
    job["rollouts_per_init"] = per_init
    with _tracker(args, config, [sim, videos, *policy.values()], **job) as tracker:
        episodes, stats = collect(
            sim,
            videos,
            policy_name=args.policy,
            out=args.out,
            rollouts_per_init=per_init,
            **policy,
            init_states=args.init_states,
            cfg_scale=args.cfg_scale,
            progress=not args.no_progress,
            tracker=tracker,
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


def _add_label(sub: argparse._SubParsersAction) -> None:
    p = _step_parser(sub, "label", "RLOO advantages and CFG labels of rollout shards", _run_label)
    p.add_argument("--rollouts", nargs="+", required=True, help="rollout shards (.h5)")
    p.add_argument("--out", required=True, help="label table to write (.parquet)")


def _run_label(args: argparse.Namespace) -> None:
    from ript.rl.label import label

    config = load_config(args.config, _parse_settings(args.settings))
    labels = Labels.of(config)
    with _tracker(args, config, [labels], rollouts=args.rollouts) as tracker:
        summary = label(labels, args.rollouts, args.out, tracker=tracker)
    print(f"label: {args.out}: {summary.line()}")


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = _step_parser(sub, "train", "SFT bootstrap or CFG post-training of the policy", _run_train)
    p.add_argument("--mode", choices=["sft", "cfg"], required=True)
    p.add_argument("--out", required=True, help="run directory; the policy lands in OUT/policy")
    p.add_argument("--demos", nargs="+", help="demonstration shards (sft)")
    p.add_argument("--labels", help="label table from `ript label` (cfg)")
    p.add_argument("--init", help="checkpoint to start from (cfg: the base policy)")
    p.add_argument("--norm-stats", help="norm_stats.json for a policy trained from scratch")
    p.add_argument("--cond-mode", help="condition mode (default: the config's first)")
    p.add_argument(
        "--alpha-uncond", type=float, help="unconditional loss weight (default: config's first)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue from OUT's last checkpoint if written with the same settings and inputs",
    )


def _run_train(args: argparse.Namespace) -> None:
    from ript.rl.train import train

    config = load_config(args.config, _parse_settings(args.settings))
    cond_mode, alpha_uncond = args.cond_mode, args.alpha_uncond
    if args.mode == "cfg" and None in (cond_mode, alpha_uncond):
        grid = Grid.of(config)  # the grid's first point, where the command names none
        cond_mode = cond_mode or grid.cond_mode[0]
        alpha_uncond = grid.alpha_uncond[0] if alpha_uncond is None else alpha_uncond
    schedule = SftSchedule.of(config) if args.mode == "sft" else CfgSchedule.of(config)
    model, optim = Model.of(config), Optimisation.of(config)
    cond_mode = cond_mode or "bias"  # SFT freezes the condition: any mode will do
    alpha_uncond = alpha_uncond or 0.0
    job = dict(mode=args.mode, init=args.init, cond_mode=cond_mode, alpha_uncond=alpha_uncond)
    with _tracker(args, config, [model, optim, schedule], **job) as tracker:
        final = train(
            model,
            optim,
            schedule,
            out=args.out,
            demos=args.demos,
            labels=args.labels,
            init=args.init,
            norm_stats=args.norm_stats,
            cond_mode=cond_mode,
            alpha_uncond=alpha_uncond,
            resume=args.resume,
            progress=not args.no_progress,
            tracker=tracker,
        )
    print(f"train: {final}")


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = _step_parser(
        sub, "evaluate", "success rate (95%% Wilson CI) of a policy -> metrics.json", _run_evaluate
    )
    p.add_argument("--policy", required=True, help="checkpoint directory or 'expert'")
    p.add_argument(
        "--cfg-scale",
        type=float,
        help="guidance scale (default: the checkpoint's policy.json, 1 unless chosen)",
    )
    p.add_argument("--out", required=True, help="metrics.json to write")
    p.add_argument("--init-states", default="eval", help="'eval' (default), 'train' or START:STOP")
    p.add_argument("--shard", help="also keep the evaluation episodes in this shard (.h5)")


def _run_evaluate(args: argparse.Namespace) -> None:
    from ript.evaluation.evaluate import evaluate

    config = load_config(args.config, _parse_settings(args.settings))
    sim, videos, evaluation = Simulation.of(config), Videos.of(config), Evaluation.of(config)
    policy = _policy_sections(args.policy, config)
    job = dict(policy=args.policy, init_states=args.init_states, cfg_scale=args.cfg_scale)
    with _tracker(args, config, [sim, videos, evaluation, *policy.values()], **job) as tracker:
        metrics = evaluate(
            sim,
            videos,
            evaluation,
            policy_name=args.policy,
            out=args.out,
            **policy,
            cfg_scale=args.cfg_scale,
            init_states=args.init_states,
            shard=args.shard,
            progress=not args.no_progress,
            tracker=tracker,
        )
    o = metrics["overall"]
    print(
        f"evaluate: {args.out}: success {o['successes']}/{o['n']} = {o['success_rate']:.3f} "
        f"(95% CI {o['ci95_low']:.3f}-{o['ci95_high']:.3f}), mean length "
        f"{o['mean_episode_length']:.1f}"
    )


def _add_tables(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("tables", help="the sweep table (csv and markdown) from metrics.json files")
    p.add_argument("--grid", nargs="+", required=True, help="metrics.json of the grid points")
    p.add_argument("--base", required=True, help="metrics.json of the base policy")
    p.add_argument("--csv", required=True, help="sweep.csv to write")
    p.add_argument("--md", required=True, help="sweep.md to write")
    p.set_defaults(run=_run_tables)


def _run_tables(args: argparse.Namespace) -> None:
    from ript.report.tables import write_tables

    table = write_tables(args.grid, args.base, args.csv, args.md)
    best = table[table["best"]].iloc[0]
    print(
        f"tables: {args.csv}: {len(table) - 1} grid points; best {best['cond_mode']} "
        f"alpha_uncond={best['alpha_uncond']:g} cfg_scale={best['cfg_scale']:g}: "
        f"{best['success_rate']:.3f} vs base {table.iloc[0]['success_rate']:.3f}"
    )


def _add_rounds(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rounds", help="the best grid point of every round (rounds: N)")
    p.add_argument("--sweeps", nargs="+", required=True, help="sweep.csv of rounds 1, 2, ...")
    p.add_argument("--csv", required=True, help="rounds.csv to write")
    p.add_argument("--md", required=True, help="rounds.md to write")
    p.add_argument(
        "--selection",
        choices=["eval", "separate"],
        default="eval",
        help="where the best points were chosen: on the evaluation episodes (eval_schedule "
        "full) or on separate selection episodes (adaptive); the table's note says which",
    )
    p.set_defaults(run=_run_rounds)


def _run_rounds(args: argparse.Namespace) -> None:
    from ript.report.tables import write_rounds_table

    table = write_rounds_table(args.sweeps, args.csv, args.md, args.selection)
    rates = ", ".join(f"{r:.3f}" for r in table["success_rate"])
    print(f"rounds: {args.csv}: best success per round {rates}")


def _add_contenders(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "contenders", help="adaptive evaluation: the grid points that go on from the screen"
    )
    p.add_argument("--screen", nargs="+", required=True, help="screen metrics.json per point")
    p.add_argument("--max-contenders", type=int, required=True, help="at most this many go on")
    p.add_argument("--out", required=True, help="contenders.json to write")
    p.set_defaults(run=_run_contenders)


def _run_contenders(args: argparse.Namespace) -> None:
    from ript.select import contenders

    if args.max_contenders < 1:
        raise ValueError(f"--max-contenders {args.max_contenders}: need at least 1")
    result = contenders(args.screen, args.max_contenders, args.out)
    print(f"contenders: {args.out}: {len(result['contenders'])} of {len(args.screen)} go on")


def _add_select(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("select", help="adaptive evaluation: the selection table and its choice")
    p.add_argument("--screen", nargs="+", required=True, help="screen metrics.json per point")
    p.add_argument("--contend", nargs="+", required=True, help="contend metrics.json per contender")
    p.add_argument("--csv", required=True, help="selection.csv to write")
    p.add_argument("--md", required=True, help="selection.md to write")
    p.set_defaults(run=_run_select)


def _run_select(args: argparse.Namespace) -> None:
    from ript.select import write_selection

    table = write_selection(args.screen, args.contend, args.csv, args.md)
    best = table[table["best"]].iloc[0]
    print(
        f"select: {args.csv}: chosen {best['cond_mode']} alpha_uncond={best['alpha_uncond']:g} "
        f"cfg_scale={best['cfg_scale']:g}: {best['successes']}/{best['n']} selection episodes"
    )


def _add_choose(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("choose", help="the best grid point of a sweep, for the next round")
    p.add_argument("--table", required=True, help="sweep.csv from `ript tables`")
    p.add_argument("--out", required=True, help="directory for policy/ and choice.json")
    p.set_defaults(run=_run_choose)


def _run_choose(args: argparse.Namespace) -> None:
    from ript.choose import choose

    c = choose(args.table, args.out)
    print(
        f"choose: {args.out}/policy = {c['policy']} at cfg_scale={c['cfg_scale']:g} "
        f"({c['cond_mode']}, alpha_uncond={c['alpha_uncond']:g}, success {c['success_rate']:.3f})"
    )


def _add_plots(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("plots", help="success vs cfg_scale, heatmap and training curves")
    p.add_argument(
        "--table", required=True, help="sweep.csv (`ript tables`) or selection.csv (`ript select`)"
    )
    p.add_argument(
        "--train-metrics", nargs="+", default=[], metavar="NAME=CSV", help="training runs"
    )
    p.add_argument("--success-vs-cfg", required=True, help="png to write")
    p.add_argument("--heatmap", required=True, help="png to write")
    p.add_argument("--training-curves", required=True, help="png to write")
    p.set_defaults(run=_run_plots)


def _run_plots(args: argparse.Namespace) -> None:
    from ript.report.plots import heatmap, success_vs_cfg, training_curves
    from ript.report.tables import read_table

    required = {"policy", "best", "cond_mode", "alpha_uncond", "cfg_scale", "success_rate",
                "ci95_low", "ci95_high"}  # fmt: skip
    table = read_table(args.table, required, "a sweep or selection table")
    success_vs_cfg(table, args.success_vs_cfg)
    heatmap(table, args.heatmap)
    runs = dict(item.split("=", 1) for item in args.train_metrics)
    training_curves(runs, args.training_curves)
    print(f"plots: {args.success_vs_cfg}, {args.heatmap}, {args.training_curves}")


def _add_videos(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "videos", help="one html page with a success and a failure video of every policy"
    )
    p.add_argument("--metrics", nargs="+", required=True, help="metrics.json of the evaluations")
    p.add_argument("--out", required=True, help="the html page to write")
    p.set_defaults(run=_run_videos)


def _run_videos(args: argparse.Namespace) -> None:
    from ript.report.videos import write_video_page

    shown = write_video_page(args.metrics, args.out)
    print(f"videos: {args.out}: {shown} videos of {len(args.metrics)} evaluations")


def _add_bundle(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bundle",
        help="an offline install of ript and one LIBERO suite, for machines without internet",
    )
    p.add_argument("--suite", required=True, help="the LIBERO suite whose assets go in")
    p.add_argument("--tasks", type=int, nargs="+", help="only these task ids (default: all)")
    p.add_argument("--out", required=True, type=Path, help="new directory for the bundle")
    p.add_argument(
        "--target-has",
        type=Path,
        help="the target's `python -m pip list --format=freeze`: what it has is left out",
    )
    p.add_argument("--python", help="the target's Python, e.g. 3.12 (default: this one)")
    p.add_argument("--part-mib", type=int, default=60, help="largest part in MiB (default 60)")
    p.add_argument(
        "--xz-preset", type=int, default=6, choices=range(10), help="0 fast .. 9 small (6)"
    )
    p.add_argument("--extras", nargs="+", default=[], help="ript extras to include, e.g. test")
    p.set_defaults(run=_run_bundle)


def _run_bundle(args: argparse.Namespace) -> None:
    from ript.bundle.build import build_bundle, summary

    manifest = build_bundle(
        args.suite,
        args.out,
        tasks=args.tasks,
        target_has=args.target_has,
        python=args.python,
        part_mib=args.part_mib,
        xz_preset=args.xz_preset,
        extras=tuple(args.extras),
    )
    print(summary(manifest, args.out))


def _add_import_checkpoint(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "import-checkpoint",
        help="a LeRobot or openpi pi0 checkpoint as a directory pretrained_path accepts",
    )
    p.add_argument("--from", dest="source", required=True, choices=["lerobot", "openpi"])
    p.add_argument("src", type=Path, help="the downloaded checkpoint directory")
    p.add_argument("--tokenizer", required=True, type=Path, help="PaliGemma's tokenizer directory")
    p.add_argument("--out", required=True, type=Path, help="new checkpoint directory")
    p.add_argument(
        "--preset",
        help="the architecture (default: from the checkpoint's variants, gemma_2b + "
        "gemma_300m = pi0)",
    )
    p.add_argument(
        "--delta-action-dims",
        type=int,
        default=0,
        help="leading action dims predicted relative to the state (openpi's pi0_libero: 6)",
    )
    p.add_argument("--state-dim", type=int, default=8, help="openpi: real state dims (LIBERO 8)")
    p.add_argument("--action-dim", type=int, default=7, help="openpi: real action dims (7)")
    p.add_argument("--asset-id", help="openpi: which assets/<id>/norm_stats.json (if several)")
    p.set_defaults(run=_run_import_checkpoint)


def _run_import_checkpoint(args: argparse.Namespace) -> None:
    from ript.models.importing import import_checkpoint

    out = import_checkpoint(
        args.source,
        args.src,
        tokenizer=args.tokenizer,
        out=args.out,
        preset=args.preset,
        delta_action_dims=args.delta_action_dims,
        state_dim=args.state_dim,
        action_dim=args.action_dim,
        asset_id=args.asset_id,
    )
    print(f"import-checkpoint: {out}: from {args.source} {args.src}; see {out}/policy.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ript", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    _add_collect(sub)
    _add_norm_stats(sub)
    _add_label(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_tables(sub)
    _add_plots(sub)
    _add_videos(sub)
    _add_rounds(sub)
    _add_contenders(sub)
    _add_select(sub)
    _add_choose(sub)
    _add_bundle(sub)
    _add_import_checkpoint(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Every failure the user can act on is one line on stderr: exit 2 for bad input or a
    write that failed (disk full, permission), 128 + N when stopped by signal N."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    install_interrupt_handlers()
    try:
        args.run(args)
    except (ConfigError, ValueError, OSError, OutputBusyError) as e:
        print(f"ript {args.step}: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except Interrupted as e:
        print(f"ript {args.step}: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print(f"ript {args.step}: stopped by SIGINT; no output was written", file=sys.stderr)
        return 128 + signal.SIGINT
    return 0


def _one_line(error: BaseException) -> str:
    """The message, with the path an OSError names (h5py and others put it elsewhere)."""
    if isinstance(error, OSError) and not isinstance(error, WriteError):
        where = f"{error.filename}: " if error.filename else ""
        return where + " ".join((error.strerror or str(error)).split())
    return str(error)


if __name__ == "__main__":
    sys.exit(main())
