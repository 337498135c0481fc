# CFG post-training per (cond_mode, alpha_uncond), from the policy the round collected with;
# cfg_scale never enters training.


rule train:
    input:
        labels=f"{RESULTS}/{{round}}labels.parquet",
        init=start_policy,
    output:
        policy=directory(f"{RESULTS}/{{round}}train/{{cond_mode}}_a{{alpha}}/policy"),
        metrics=f"{RESULTS}/{{round}}train/{{cond_mode}}_a{{alpha}}/metrics.csv",
    params:
        settings=settings(Model, Optimisation, CfgSchedule),
        out=lambda wildcards, output: str(Path(output.metrics).parent),
        train=TRAIN,
    log:
        f"{RESULTS}/logs/{{round}}train/{{cond_mode}}_a{{alpha}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{round}}train/{{cond_mode}}_a{{alpha}}.tsv"
    threads: TRAIN_THREADS
    resources:
        mem_mb=mem_mb("train"),
        gpu=TRAIN_GPUS,
    conda:
        ENV
    shell:
        "{params.train} --mode cfg --labels {input.labels} --init {input.init} "
        "--cond-mode {wildcards.cond_mode} --alpha-uncond {wildcards.alpha} "
        "{params.settings} --job-type train --out {params.out} --resume --no-progress "
        "> {log} 2>&1"
