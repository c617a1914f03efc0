rule embed:
    input:
        descriptions=rules.describe.output[0],
        sequences=rules.annotate.output.fasta,
        code=code("embed"),
    output:
        text=f"{RESULTS}/embed/text.npz",
        dna=f"{RESULTS}/embed/dna.npz",
    params:
        options=opts("embed"),
        cache="resources/embeddings",
    log:
        f"{LOGS}/embed.log",
    benchmark:
        f"{BENCH}/embed.tsv"
    threads: 2
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        "../envs/grape.yaml"
    shell:
        "python -m grape embed --descriptions {input.descriptions} --sequences {input.sequences}"
        " --cache-dir {params.cache} --text-out {output.text} --dna-out {output.dna}"
        " --threads {threads} {params.options} > {log} 2>&1"
