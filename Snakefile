# ript: RL post-training of flow-matching VLAs on LIBERO with classifier-free guidance.
#   snakemake --cores 8 all          # the whole chain on the configured experiment
# Every rule calls one `ript <step>`; the logic lives in the `ript` package.

configfile: "config/config.yaml"


wildcard_constraints:
    task=r"\d+",


include: "workflow/rules/common.smk"
include: "workflow/rules/demos.smk"


rule all:
    default_target: True
    input:
        demo_shards(),
