# RLOO advantages and CFG labels of all rollouts.


rule label:
    input:
        rollout_shards(),
    output:
        f"{RESULTS}/labels.parquet",
    params:
        settings=settings(LABEL_KEYS),
    log:
        f"{RESULTS}/logs/label.log",
    benchmark:
        f"{RESULTS}/benchmarks/label.tsv"
    conda:
        ENV
    shell:
        "ript label --rollouts {input} {params.settings} --out {output} > {log} 2>&1"
