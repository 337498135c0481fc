# K rollouts of the base policy per training init state, one shard per task and init chunk.


rule collect:
    input:
        policy=base_policy(),
    output:
        shard=f"{RESULTS}/rollouts/task{{task}}_init{{start}}-{{stop}}.h5",
        index=f"{RESULTS}/rollouts/task{{task}}_init{{start}}-{{stop}}.index.parquet",
    params:
        settings=lambda wildcards: settings(
            ENV_KEYS + ["rollouts_per_init", "device", "compile", "tokenizer_path"],
            tasks=[int(wildcards.task)],
        ),
    log:
        f"{RESULTS}/logs/collect/task{{task}}_init{{start}}-{{stop}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/collect/task{{task}}_init{{start}}-{{stop}}.tsv"
    threads: config["num_parallel_envs"]
    conda:
        ENV
    shell:
        "ript collect --policy {input.policy} --init-states {wildcards.start}:{wildcards.stop} "
        "--num-parallel-envs {threads} {params.settings} --out {output.shard} --no-progress "
        "> {log} 2>&1"
