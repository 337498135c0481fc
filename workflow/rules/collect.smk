# K rollouts per training init state, one shard per task and init chunk: round 1 with the
# base policy, round r > 1 with round r - 1's chosen policy (at its cfg_scale) and seed + r - 1.


rule collect:
    input:
        policy=start_policy,
    output:
        shard=f"{RESULTS}/{{round}}rollouts/task{{task}}_init{{start}}-{{stop}}.h5",
        index=f"{RESULTS}/{{round}}rollouts/task{{task}}_init{{start}}-{{stop}}.index.parquet",
    params:
        settings=lambda wildcards: settings(
            Simulation,
            Videos,
            Inference,
            Collection,
            exclude=["num_parallel_envs"],
            tasks=[int(wildcards.task)],
            seed=config["seed"] + round_number(wildcards) - 1,
        ),
    log:
        f"{RESULTS}/logs/{{round}}collect/task{{task}}_init{{start}}-{{stop}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{round}}collect/task{{task}}_init{{start}}-{{stop}}.tsv"
    threads: config["num_parallel_envs"]
    resources:
        mem_mb=mem_mb("collect"),
        gpu=GPUS,
    conda:
        ENV
    shell:
        "ript collect --policy {input.policy} --init-states {wildcards.start}:{wildcards.stop} "
        "--num-parallel-envs {threads} {params.settings} --job-type collect "
        "--out {output.shard} --no-progress > {log} 2>&1"
