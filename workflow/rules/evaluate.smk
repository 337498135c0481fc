# Success on the evaluation init states: every grid point at every cfg_scale, and the base.

# evaluations pass num_parallel_envs with the rest (threads follow the config)
EVAL_SECTIONS = (Simulation, Videos, Inference, Evaluation)


rule evaluate:
    input:
        policy=f"{RESULTS}/{{round}}train/{{cond_mode}}_a{{alpha}}/policy",
    output:
        f"{RESULTS}/{{round}}eval/{{cond_mode}}_a{{alpha}}/cfg{{cfg}}/metrics.json",
    params:
        settings=settings(*EVAL_SECTIONS),
    log:
        f"{RESULTS}/logs/{{round}}eval/{{cond_mode}}_a{{alpha}}_cfg{{cfg}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{round}}eval/{{cond_mode}}_a{{alpha}}_cfg{{cfg}}.tsv"
    threads: config["num_parallel_envs"]
    resources:
        mem_mb=mem_mb("evaluate"),
        gpu=GPUS,
    conda:
        ENV
    shell:
        "ript evaluate --policy {input.policy} --cfg-scale {wildcards.cfg} {params.settings} "
        "--job-type evaluate --out {output} --no-progress > {log} 2>&1"


rule evaluate_base:
    input:
        policy=base_policy(),
    output:
        f"{RESULTS}/eval/base/metrics.json",
    params:
        settings=settings(*EVAL_SECTIONS),
    log:
        f"{RESULTS}/logs/eval/base.log",
    benchmark:
        f"{RESULTS}/benchmarks/eval/base.tsv"
    threads: config["num_parallel_envs"]
    resources:
        mem_mb=mem_mb("evaluate_base"),
        gpu=GPUS,
    conda:
        ENV
    shell:
        "ript evaluate --policy {input.policy} --cfg-scale 1 {params.settings} "
        "--job-type evaluate_base --out {output} --no-progress > {log} 2>&1"
