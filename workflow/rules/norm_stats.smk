# openpi norm stats of state and actions over the expert demonstrations.


rule norm_stats:
    input:
        demo_shards(),
    output:
        f"{RESULTS}/norm_stats.json",
    params:
        state_keys=" ".join(config["state_keys"]),
    log:
        f"{RESULTS}/logs/norm_stats.log",
    benchmark:
        f"{RESULTS}/benchmarks/norm_stats.tsv"
    conda:
        ENV
    shell:
        "ript norm-stats --shards {input} --state-keys {params.state_keys} --out {output} "
        "> {log} 2>&1"
