rule ensembl_download:
    output:
        "resources/pyensembl/{assembly}/ensembl{release}/{filename}",
    wildcard_constraints:
        release=r"\d+",
        filename=r"[^/]+\.(gtf|fa)\.gz",
    params:
        species=config["annotate"]["ensembl_species"],
        server=config["annotate"]["ensembl_url"],
        options=opts("ensembl"),
        code=code_hash("ensembl"),
        grape=GRAPE,
    log:
        "logs/ensembl_download/{assembly}-{release}-{filename}.log",
    conda:
        "../envs/annotate.yaml"
    shell:
        "{params.grape} ensembl --root resources --file {output} --species {params.species}"
        " --release {wildcards.release} --ensembl-url {params.server} {params.options} > {log} 2>&1"


rule annotate:
    input:
        unpack(annotation_files),
        dataset=dataset_path(),
        preflight=rules.preflight.output[0],
    output:
        genes=f"{RESULTS}/annotate/genes.tsv",
        fasta=f"{RESULTS}/annotate/sequences.fa",
        missing=f"{RESULTS}/annotate/missing_genes.tsv",
        mapping=f"{RESULTS}/annotate/mapping.tsv",
    params:
        files=annotation_args,
        options=opts("annotate"),
        cache="resources/pyensembl",
        code=code_hash("annotate"),
        grape=GRAPE,
    log:
        f"{LOGS}/annotate.log",
    conda:
        "../envs/annotate.yaml"
    shell:
        "{params.grape} annotate {params.files} --dataset {input.dataset} --cache-dir {params.cache}"
        " --genes-out {output.genes} --fasta-out {output.fasta} --missing-out {output.missing}"
        " --mapping-out {output.mapping} {params.options} > {log} 2>&1"
