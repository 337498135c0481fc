# eval_schedule: adaptive. Every grid point runs the screen episodes, the contenders also run
# the contend episodes, the best on those is chosen (ript/select.py), and only the chosen
# point runs the evaluation init states (rule evaluate_chosen), paired with the base.


rule evaluate_selection:
    input:
        policy=f"{RESULTS}/{{round}}train/{{cond_mode}}_a{{alpha}}/policy",
    output:
        f"{RESULTS}/{{round}}select/{{stage}}/{{cond_mode}}_a{{alpha}}/cfg{{cfg}}/metrics.json",
    params:
        settings=settings(
            *EVAL_SECTIONS, eval_rollouts_per_init=config["select_rollouts_per_init"]
        ),
        init_states=lambda wildcards: ":".join(
            map(str, config[f"{wildcards.stage}_init_states"])
        ),
    log:
        f"{RESULTS}/logs/{{round}}select/{{stage}}/{{cond_mode}}_a{{alpha}}_cfg{{cfg}}.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{round}}select/{{stage}}/{{cond_mode}}_a{{alpha}}_cfg{{cfg}}.tsv"
    threads: config["num_parallel_envs"]
    resources:
        mem_mb=mem_mb("evaluate_selection"),
        gpu=GPUS,
    conda:
        ENV
    shell:
        "ript evaluate --policy {input.policy} --cfg-scale {wildcards.cfg} "
        "--init-states {params.init_states} {params.settings} --job-type evaluate_selection "
        "--out {output} --no-progress > {log} 2>&1"


checkpoint contenders:
    input:
        screen=screen_metrics,
    output:
        f"{RESULTS}/{{round}}select/contenders.json",
    params:
        max_contenders=config["max_contenders"],
    log:
        f"{RESULTS}/logs/{{round}}select/contenders.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{round}}select/contenders.tsv"
    conda:
        ENV
    shell:
        "ript contenders --screen {input.screen} --max-contenders {params.max_contenders} "
        "--out {output} > {log} 2>&1"


rule select:
    input:
        screen=screen_metrics,
        contend=contend_metrics,
    output:
        csv=report(
            f"{RESULTS}/{{round}}tables/selection.csv",
            caption="../report/selection.rst",
            category="Tables",
        ),
        md=f"{RESULTS}/{{round}}tables/selection.md",
    log:
        f"{RESULTS}/logs/{{round}}select/select.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{round}}select/select.tsv"
    conda:
        ENV
    shell:
        "ript select --screen {input.screen} --contend {input.contend} --csv {output.csv} "
        "--md {output.md} > {log} 2>&1"


rule evaluate_chosen:
    input:
        policy=f"{RESULTS}/{{round}}chosen/policy",
    output:
        f"{RESULTS}/{{round}}eval/chosen/metrics.json",
    params:
        settings=settings(*EVAL_SECTIONS),
    log:
        f"{RESULTS}/logs/{{round}}eval/chosen.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{round}}eval/chosen.tsv"
    threads: config["num_parallel_envs"]
    resources:
        mem_mb=mem_mb("evaluate_chosen"),
        gpu=GPUS,
    conda:
        ENV
    shell:
        "ript evaluate --policy {input.policy} {params.settings} --job-type evaluate_chosen "
        "--out {output} --no-progress > {log} 2>&1"
