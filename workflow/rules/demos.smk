# Scripted-expert demonstrations on the training init states, one shard per task.


rule demos:
    output:
        shard=f"{RESULTS}/demos/task{{task}}.h5",
        index=f"{RESULTS}/demos/task{{task}}.index.parquet",
    params:
        settings=lambda wildcards: settings(
            Simulation,
            Videos,
            Expert,
            exclude=["num_parallel_envs"],
            tasks=[int(wildcards.task)],
        ),
        per_init=config["demos_per_init"],
    log:
        f"{RESULTS}/logs/demos/task{{task}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/demos/task{{task}}.tsv"
    threads: config["num_parallel_envs"]
    resources:
        mem_mb=mem_mb("demos"),
    conda:
        ENV
    shell:
        "ript collect --policy expert --init-states train --rollouts-per-init {params.per_init} "
        "--num-parallel-envs {threads} "
        "{params.settings} --job-type demos --out {output.shard} --no-progress "
        "> {log} 2>&1"
