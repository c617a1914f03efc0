"""Where pyensembl's cache keeps the files of an Ensembl release, computed without pyensembl.

The workflow needs the paths of the GTF, cDNA and ncRNA FASTA of ``annotate.ensembl_release``
while Snakemake parses (they are the annotate rule's inputs), and the Snakemake process
must not import pyensembl. :func:`release_paths` computes them from :data:`SPECIES`, a copy
of pyensembl's species registry (the pinned pyensembl 2.32.3: species, their synonyms and
which assembly each release uses), and its file-name templates. ``tests/test_ensembl_layout.py``
checks both against the installed pyensembl, so a new pyensembl that changes them fails there
(:func:`pyensembl_species` prints the table anew). URLs stay pyensembl's
(:func:`grape.annotation.ensembl.release_files`). Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

KINDS = ("gtf", "cdna", "ncrna")


@dataclass(frozen=True)
class _Species:
    """One species of pyensembl's registry: its assemblies by inclusive release range."""

    latin_name: str
    synonyms: tuple[str, ...]
    assemblies: dict[str, tuple[int, int]]
    names: dict[int, str] = field(default_factory=dict)  # release from which Ensembl publishes it under another name
    no_ncrna: tuple[str, ...] = ()  # assemblies without an ncRNA FASTA
    vertebrate: bool = True
    genomes: bool = False  # served by Ensembl Genomes (its own release numbers)

    def assembly(self, release: int) -> str | None:
        return next((name for name, (first, last) in self.assemblies.items() if first <= release <= last), None)

    def ensembl_name(self, release: int) -> str:
        return next((name for first, name in sorted(self.names.items(), reverse=True) if release >= first), self.latin_name)


SPECIES: tuple[_Species, ...] = (
    _Species('homo_sapiens', ('human',),
             {'GRCh38': (76, 116), 'GRCh37': (55, 75), 'NCBI36': (54, 54)}),
    _Species('mus_musculus', ('mouse', 'house mouse'),
             {'NCBIM37': (54, 67), 'GRCm38': (68, 102), 'GRCm39': (103, 116)}),
    _Species('canis_familiaris', ('dog',),
             {'CanFam3.1': (75, 104), 'ROS_Cfam_1.0': (105, 116)}, names={100: 'canis_lupus_familiaris'}),
    _Species('canis_lupus_dingo', ('dingo',),
             {'ASM325472v1': (95, 116)}),
    _Species('canis_lupus_familiarisbasenji', ('dog_basenji', 'basenji'),
             {'Basenji_breed-1.1': (99, 116)}),
    _Species('canis_lupus_familiarisgreatdane', ('dog_great_dane', 'great_dane'),
             {'UMICH_Zoey_3.1': (99, 116)}),
    _Species('canis_lupus_familiarisboxer', ('dog_boxer', 'boxer'),
             {'Dog10K_Boxer_Tasha': (105, 116)}),
    _Species('canis_lupus_familiarisgsd', ('dog_german_shepherd', 'german_shepherd'),
             {'UU_Cfam_GSD_1.0': (107, 116)}),
    _Species('felis_catus', ('cat',),
             {'Felis_catus_6.2': (75, 90), 'Felis_catus_8.0': (91, 92), 'Felis_catus_9.0': (93, 113), 'F.catus_Fca126_mat1.0': (114, 116)}),
    _Species('gallus_gallus', ('chicken',),
             {'Galgal4': (75, 85), 'Gallus_gallus-5.0': (86, 94), 'GRCg6a': (95, 106), 'bGalGal1.mat.broiler.GRCg7b': (107, 116)}),
    _Species('rattus_norvegicus', ('brown rat', 'lab rat', 'rat'),
             {'Rnor_5.0': (75, 79), 'Rnor_6.0': (80, 104), 'mRatBN7.2': (105, 113), 'GRCr8': (114, 116)}),
    _Species('macaca_fascicularis', ('macaque', 'Crab-eating macaque'),
             {'Macaca_fascicularis_6.0': (103, 116)}),
    _Species('chlorocebus_sabaeus', ('green_monkey', 'african_green_monkey'),
             {'ChlSab1.1': (86, 116)}),
    _Species('macaca_mulatta', ('rhesus',),
             {'MMUL_1': (75, 85), 'Mmul_8.0.1': (86, 97), 'Mmul_10': (98, 116)}),
    _Species('oryctolagus_cuniculus', ('rabbit',),
             {'OryCun2.0': (75, 116)}),
    _Species('meriones_unguiculatus', ('gerbil',),
             {'MunDraft-v1.0': (96, 116)}),
    _Species('mesocricetus_auratus', ('syrian_hamster',),
             {'MesAur1.0': (90, 116)}),
    _Species('cricetulus_griseus_chok1gshd', ('chinese_hamster',),
             {'CHOK1GS_HDv1': (90, 116)}),
    _Species('heterocephalus_glaber_female', ('naked_mole_rat',),
             {'HetGla_female_1.0': (90, 109), 'Naked_mole-rat_maternal': (110, 116)}),
    _Species('cavia_porcellus', ('guinea_pig',),
             {'cavPor3': (75, 89), 'Cavpor3.0': (90, 116)}),
    _Species('sus_scrofa', ('pig',),
             {'Sscrofa10.2': (75, 89), 'Sscrofa11.1': (90, 116)}),
    _Species('danio_rerio', ('zebrafish',),
             {'ZFISH7': (48, 53), 'Zv8': (54, 59), 'Zv9': (60, 79), 'GRCz10': (80, 91), 'GRCz11': (92, 116)}),
    _Species('xenopus_tropicalis', ('xenopus', 'western_clawed_frog', 'tropical_clawed_frog'),
             {'Xenopus_tropicalis_v9.1': (98, 106), 'UCB_Xtro_10.0': (107, 116)}),
    _Species('drosophila_melanogaster', ('drosophila', 'fruit fly', 'fly'),
             {'BDGP5': (75, 78), 'BDGP6': (79, 95), 'BDGP6.22': (96, 98), 'BDGP6.28': (99, 102), 'BDGP6.32': (103, 110), 'BDGP6.46': (111, 113), 'BDGP6.54': (114, 116)}, vertebrate=False),
    _Species('caenorhabditis_elegans', ('nematode', 'C_elegans'),
             {'WS180': (48, 49), 'WS190': (50, 54), 'WS200': (55, 57), 'WS210': (58, 60), 'WS220': (61, 66), 'WBcel215': (67, 70), 'WBcel235': (71, 116)}, vertebrate=False),
    _Species('saccharomyces_cerevisiae', ('yeast', 'budding_yeast'),
             {'R64-1-1': (76, 116)}, vertebrate=False),
    _Species('arabidopsis_thaliana', ('arabidopsis',),
             {'TAIR10': (40, 63)}, vertebrate=False, genomes=True),
    _Species('oryza_sativa', ('rice',),
             {'IRGSP-1.0': (40, 63)}, vertebrate=False, genomes=True),
    _Species('triticum_aestivum', ('wheat', 'bread_wheat'),
             {'IWGSC': (40, 63)}, vertebrate=False, genomes=True),
    _Species('zea_mays', ('maize', 'corn'),
             {'Zm-B73-REFERENCE-NAM-5.0': (54, 63)}, vertebrate=False, genomes=True),
    _Species('solanum_lycopersicum', ('tomato',),
             {'SL3.0': (42, 62), 'SL4.0': (63, 63)}, names={63: 'solanum_lycopersicum_gca000188115v5cm'}, no_ncrna=('SL4.0',), vertebrate=False, genomes=True),
    _Species('glycine_max', ('soybean', 'soya_bean'),
             {'Glycine_max_v2.1': (43, 63)}, vertebrate=False, genomes=True),
    _Species('schizosaccharomyces_pombe', ('fission_yeast', 'pombe'),
             {'ASM294v2': (40, 63)}, vertebrate=False, genomes=True),
    _Species('aspergillus_nidulans', ('aspergillus',),
             {'ASM1142v1': (40, 63)}, vertebrate=False, genomes=True),
    _Species('candida_albicans', ('candida',),
             {'GCA000182965v3': (52, 63)}, vertebrate=False, genomes=True),
    _Species('anopheles_gambiae', ('mosquito', 'malaria_mosquito'),
             {'AgamP4': (40, 63)}, vertebrate=False, genomes=True),
    _Species('plasmodium_falciparum', ('plasmodium', 'malaria_parasite'),
             {'EPr1': (40, 44), 'ASM276v2': (45, 60), 'GCA000002765v3': (61, 63)}, vertebrate=False, genomes=True),
    _Species('toxoplasma_gondii', ('toxoplasma',),
             {'TGA4': (40, 60), 'GCA000006565v2': (61, 63)}, vertebrate=False, genomes=True),
    _Species('mus_musculus_balbcj', ('mus_balbc', 'BALB/c'),
             {'BALB_cJ_v1': (92, 113), 'BALB_cJ_v3': (114, 116)}),
    _Species('mus_musculus_129s1svimj', ('mus_129', '129'),
             {'129S1_SvImJ_v1': (92, 113), '129S1_SvImJ_v3': (114, 116)}),
    _Species('mus_musculus_fvbnj', ('mus_fvb', 'FVB'),
             {'FVB_NJ_v1': (92, 113), 'FVB_NJ_v3': (114, 116)}),
    _Species('mus_musculus_nodshiltj', ('mus_nod', 'NOD'),
             {'NOD_ShiLtJ_v1': (92, 113), 'NOD_ShiLtJ_v3': (114, 116)}),
    _Species('mus_musculus_c57bl6nj', ('mus_6nj', '6NJ'),
             {'C57BL_6NJ_v1': (92, 113), 'C57BL_6NJ_v3': (114, 116)}),
)


def find_species(name: str) -> _Species:
    """The species named ``name`` (latin name, synonym or a name Ensembl published it under, any case)."""
    wanted = name.lower().strip()
    for candidate in (wanted, wanted.replace(" ", "_")):
        for species in SPECIES:
            if candidate in (species.latin_name, *species.synonyms, *species.names.values()):
                return species
    raise ValueError(f"annotate.ensembl_species: {name!r} is not a species pyensembl knows "
                     f"(e.g. {', '.join(s.latin_name for s in SPECIES[:4])})")


def release_paths(*, species: str, release: int, root: str | Path = "resources") -> dict[str, Path]:
    """GTF, cDNA and ncRNA FASTA of an Ensembl release by kind, where pyensembl's cache under ``root`` keeps them.

    ``root/pyensembl/<assembly>/ensembl<release>/<file name on the Ensembl server>``, as
    :func:`grape.annotation.ensembl.release_files` gives them. Raises ``ValueError`` naming
    the species and release when the species has no genome in that release or no ncRNA
    FASTA. Nothing is read or created.
    """
    entry = find_species(species)
    release = int(release)
    assembly = entry.assembly(release)
    if assembly is None:
        raise ValueError(f"annotate.ensembl_species / ensembl_release: {species!r} release {release}: no genome for "
                         f"{entry.latin_name} in that release (releases {', '.join(f'{a}: {f}-{l}' for a, (f, l) in entry.assemblies.items())})")
    if assembly in entry.no_ncrna:
        raise ValueError(f"pyensembl gives no cDNA/ncRNA FASTA for {species} release {release}: assembly {assembly} has no ncRNA FASTA")
    prefix = f"{entry.ensembl_name(release).capitalize()}.{assembly}"
    patches = release >= 82 and assembly in ("GRCh38", "GRCm38", "GRCz11")  # patch/haplotype GTF since release 82
    gtf_release = 63 if release == 116 and not entry.vertebrate else release  # 116 republished Ensembl Genomes 63
    names = {"gtf": f"{prefix}.{gtf_release}.chr_patch_hapl_scaff.gtf.gz" if patches else f"{prefix}.{gtf_release}.gtf.gz"}
    if release > 75 or entry.genomes:
        names |= {"cdna": f"{prefix}.cdna.all.fa.gz", "ncrna": f"{prefix}.ncrna.fa.gz"}
    else:
        names |= {"cdna": f"{prefix}.{release}.cdna.all.fa.gz", "ncrna": f"{prefix}.{release}.ncrna.fa.gz"}
    directory = Path(root) / "pyensembl" / assembly / f"ensembl{release}"
    return {kind: directory / names[kind] for kind in KINDS}


def pyensembl_species() -> tuple[_Species, ...]:
    """:data:`SPECIES` as the installed pyensembl registers them (imports pyensembl: for the test and for updates)."""
    from pyensembl.species import Species

    species = (Species._latin_names_to_species[name] for name in Species.all_registered_latin_names())
    return tuple(
        _Species(s.latin_name, tuple(s.synonyms), {k: tuple(v) for k, v in s.reference_assemblies.items()},
                 dict(s.ensembl_names), tuple(sorted(s.assemblies_without_ncrna)), s.division == "vertebrates",
                 bool(s.ensembl_genomes))
        for s in species
    )
