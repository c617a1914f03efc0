# Embeddings in embed.shards jobs: plan (genes split by work), one job per shard (a GPU each
# when embed.gpus_per_job is 1), and a merge into the text.npz / dna.npz the graph reads.
# All shards share the content-keyed cache under resources/embeddings.


localrules:
    embed_plan,
    embed,


rule embed_plan:
    input:
        descriptions=rules.describe.output[0],
        sequences=rules.annotate.output.fasta,
    output:
        expand(f"{RESULTS}/embed/shards/genes.{{shard}}.txt", shard=range(config["embed"]["shards"])),
    params:
        options=opts("embed"),
        code=code_hash("embed"),
        grape=GRAPE,
    log:
        f"{LOGS}/embed_plan.log",
    conda:
        "../envs/grape.yaml"
    shell:
        "{params.grape} embed --descriptions {input.descriptions} --sequences {input.sequences}"
        " --plan-out {output} {params.options} > {log} 2>&1"


rule embed_shard:
    input:
        descriptions=rules.describe.output[0],
        sequences=rules.annotate.output.fasta,
        genes=f"{RESULTS}/embed/shards/genes.{{shard}}.txt",
    output:
        text=f"{RESULTS}/embed/shards/text.{{shard}}.npz",
        dna=f"{RESULTS}/embed/shards/dna.{{shard}}.npz",
    wildcard_constraints:
        shard=r"\d+",
    params:
        options=opts("embed"),
        cache="resources/embeddings",
        code=code_hash("embed"),
        grape=GRAPE,
    log:
        f"{LOGS}/embed_shard.{{shard}}.log",
    benchmark:
        f"{BENCH}/embed_shard.{{shard}}.tsv"
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
        gpu=config["embed"]["gpus_per_job"],
    conda:
        "../envs/grape.yaml"
    shell:
        "{params.grape} embed --descriptions {input.descriptions} --sequences {input.sequences}"
        " --genes {input.genes} --cache-dir {params.cache} --text-out {output.text} --dna-out {output.dna}"
        " --threads {threads} {params.options} > {log} 2>&1"


rule embed:
    input:
        descriptions=rules.describe.output[0],
        text=expand(f"{RESULTS}/embed/shards/text.{{shard}}.npz", shard=range(config["embed"]["shards"])),
        dna=expand(f"{RESULTS}/embed/shards/dna.{{shard}}.npz", shard=range(config["embed"]["shards"])),
    output:
        text=f"{RESULTS}/embed/text.npz",
        dna=f"{RESULTS}/embed/dna.npz",
    params:
        code=code_hash("embed"),
        grape=GRAPE,
    log:
        f"{LOGS}/embed.log",
    conda:
        "../envs/grape.yaml"
    shell:
        "{params.grape} embed --descriptions {input.descriptions} --text-parts {input.text}"
        " --dna-parts {input.dna} --text-out {output.text} --dna-out {output.dna} > {log} 2>&1"
