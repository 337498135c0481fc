# RLOO advantages and CFG labels of all rollouts of a round.


rule label:
    input:
        rollout_shards,
    output:
        f"{RESULTS}/{{round}}labels.parquet",
    params:
        settings=settings(Labels),
    log:
        f"{RESULTS}/logs/{{round}}label.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{round}}label.tsv"
    conda:
        ENV
    shell:
        "ript label --rollouts {input} {params.settings} --job-type label "
        "--out {output} > {log} 2>&1"
