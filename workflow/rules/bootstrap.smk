# The base policy: SFT on the expert demonstrations (skipped when pretrained_path is set).


rule bootstrap:
    input:
        demos=demo_shards(),
        norm_stats=f"{RESULTS}/norm_stats.json",
    output:
        policy=directory(f"{RESULTS}/base/policy"),
        metrics=f"{RESULTS}/base/metrics.csv",
    params:
        settings=settings(Model, Optimisation, SftSchedule),
        out=lambda wildcards, output: str(Path(output.metrics).parent),
        train=TRAIN,
    log:
        f"{RESULTS}/logs/bootstrap.log",
    benchmark:
        f"{RESULTS}/benchmarks/bootstrap.tsv"
    threads: TRAIN_THREADS
    resources:
        mem_mb=mem_mb("bootstrap"),
        gpu=TRAIN_GPUS,
    conda:
        ENV
    shell:
        "{params.train} --mode sft --demos {input.demos} --norm-stats {input.norm_stats} "
        "{params.settings} --job-type bootstrap --out {params.out} --resume --no-progress "
        "> {log} 2>&1"
