# ript: RL post-training of flow-matching VLAs on LIBERO with classifier-free guidance.
#   snakemake --cores 8 all                 # the whole chain on the configured experiment
#   snakemake --profile slurm sweep         # the same grid on a SLURM cluster
#   snakemake --cores 8 eval                # only the base (or pretrained) policy's success
#   snakemake --report results/<experiment>/report.html
# Every rule calls one `ript <step>`; the logic lives in the `ript` package.

# The embedded default, unless an experiment config is given (it replaces the default:
# workflow/rules/common.smk).
if not workflow.config_settings.configfiles:

    configfile: "config/config.yaml"


# `round` is a path prefix: empty for round 1 (results/<experiment>/...), "round<r>/" after.
wildcard_constraints:
    round=r"(round([2-9]|[1-9][0-9]+)/)?",
    task=r"\d+",
    start=r"\d+",
    stop=r"\d+",
    stage=r"screen|contend",
    cond_mode=r"token|concat|bias",
    alpha=r"[0-9][0-9.e+-]*",
    cfg=r"[0-9][0-9.e+-]*",


include: "workflow/rules/common.smk"
include: "workflow/rules/demos.smk"
include: "workflow/rules/norm_stats.smk"
include: "workflow/rules/bootstrap.smk"
include: "workflow/rules/collect.smk"
include: "workflow/rules/label.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/select.smk"
include: "workflow/rules/report.smk"
include: "workflow/rules/rounds.smk"


report: "workflow/report/workflow.rst"


rule sweep:
    input:
        expand([*rules.tables.output, *rules.plots.output], round=ROUND_PREFIXES),
        expand(rules.select.output, round=ROUND_PREFIXES) if ADAPTIVE else [],
        rules.rounds_table.output if len(ROUND_PREFIXES) > 1 else [],
        expand(rules.videos.output, round=ROUND_PREFIXES) if config["n_video"] > 0 else [],


rule eval:
    input:
        f"{RESULTS}/eval/base/metrics.json",


rule all:
    default_target: True
    input:
        rules.sweep.input,
