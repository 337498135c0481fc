# Multi-round runs (`rounds: N`): round r's best grid point becomes round r + 1's policy.


rule choose:
    input:
        table=choice_table,
    output:
        policy=directory(f"{RESULTS}/{{round}}chosen/policy"),
        choice=f"{RESULTS}/{{round}}chosen/choice.json",
    params:
        out=lambda wildcards, output: str(Path(output.choice).parent),
    log:
        f"{RESULTS}/logs/{{round}}choose.log",
    benchmark:
        f"{RESULTS}/benchmarks/{{round}}choose.tsv"
    conda:
        ENV
    shell:
        "ript choose --table {input.table} --out {params.out} > {log} 2>&1"


rule rounds_table:
    input:
        expand(f"{RESULTS}/{{prefix}}tables/sweep.csv", prefix=ROUND_PREFIXES),
    output:
        csv=report(
            f"{RESULTS}/tables/rounds.csv", caption="../report/rounds.rst", category="Tables"
        ),
        md=f"{RESULTS}/tables/rounds.md",
    params:
        selection="separate" if ADAPTIVE else "eval",
    log:
        f"{RESULTS}/logs/rounds_table.log",
    benchmark:
        f"{RESULTS}/benchmarks/rounds_table.tsv"
    conda:
        ENV
    shell:
        "ript rounds --sweeps {input} --csv {output.csv} --md {output.md} "
        "--selection {params.selection} > {log} 2>&1"
