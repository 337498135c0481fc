# The sweep table and the plots users read (and `snakemake --report` renders).


rule tables:
    input:
        grid=evaluated_points,
        base=f"{RESULTS}/eval/base/metrics.json",
    output:
        csv=report(
            f"{RESULTS}/{{round}}tables/sweep.csv",
            caption="../report/sweep.rst",
            category="Tables",
        ),
        md=f"{RESULTS}/{{round}}tables/sweep.md",
    log:
        f"{RESULTS}/logs/{{round}}tables.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{round}}tables.tsv"
    conda:
        ENV
    shell:
        "ript tables --grid {input.grid} --base {input.base} --csv {output.csv} "
        "--md {output.md} > {log} 2>&1"


rule plots:
    input:
        table=choice_table,
        train=train_metrics,
    output:
        success=report(
            f"{RESULTS}/{{round}}plots/success_vs_cfg.png",
            caption="../report/success_vs_cfg.rst",
            category="Plots",
        ),
        heatmap=report(
            f"{RESULTS}/{{round}}plots/heatmap.png", caption="../report/heatmap.rst", category="Plots"
        ),
        curves=report(
            f"{RESULTS}/{{round}}plots/training_curves.png",
            caption="../report/training_curves.rst",
            category="Plots",
        ),
    params:
        runs=lambda wildcards, input: " ".join(
            f"{Path(m).parent.name}={m}" for m in input.train
        ),
    log:
        f"{RESULTS}/logs/{{round}}plots.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{round}}plots.tsv"
    conda:
        ENV
    shell:
        "ript plots --table {input.table} --train-metrics {params.runs} "
        "--success-vs-cfg {output.success} --heatmap {output.heatmap} "
        "--training-curves {output.curves} > {log} 2>&1"


rule videos:
    input:
        base=f"{RESULTS}/eval/base/metrics.json",
        grid=evaluated_points,
    output:
        report(f"{RESULTS}/{{round}}videos.html", caption="../report/videos.rst", category="Videos"),
    log:
        f"{RESULTS}/logs/{{round}}videos.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{round}}videos.tsv"
    conda:
        ENV
    shell:
        "ript videos --metrics {input.base} {input.grid} --out {output} > {log} 2>&1"
