# ript: RL post-training of flow-matching VLAs on LIBERO with classifier-free guidance.
#   snakemake --cores 8 all                 # the whole chain on the configured experiment
#   snakemake --profile slurm sweep         # the same grid on a SLURM cluster
#   snakemake --report results/<experiment>/report.html
# Every rule calls one `ript <step>`; the logic lives in the `ript` package.

configfile: "config/config.yaml"


wildcard_constraints:
    task=r"\d+",
    start=r"\d+",
    stop=r"\d+",
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
include: "workflow/rules/report.smk"


report: "workflow/report/workflow.rst"


rule sweep:
    input:
        f"{RESULTS}/tables/sweep.csv",
        f"{RESULTS}/tables/sweep.md",
        rules.plots.output,


rule all:
    default_target: True
    input:
        rules.sweep.input,
