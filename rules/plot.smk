from workflow.plots import FIGURES, drawable

# The summaries this study has, and the figures they are enough for.
STUDY_SUMMARIES = list(STUDY.summaries())
STUDY_FIGURES = [f for f in FIGURES if drawable(f, STUDY_SUMMARIES)]


localrules:
    plot,
    plots,


if STUDY_FIGURES:

    rule plot:
        """Every figure, drawn from summaries alone, as PNG and PDF, in one job."""
        input:
            unpack(lambda w: {name: STUDY.summary_path(name) for name in STUDY_SUMMARIES}),
        output:
            [STUDY.plot_path(f, ext) for f in STUDY_FIGURES for ext in ("png", "pdf")],
        params:
            figures=" ".join(STUDY_FIGURES),
            summaries=lambda w, input: " ".join(f"--summary {name}={path}" for name, path in input.items()),
            out=lambda w: " ".join(f"--out '{STUDY.plot_path('{figure}', ext)}'" for ext in ("png", "pdf")),
        conda:
            ENV
        log:
            f"{R}/logs/plots/plots.log",
        shell:
            JOB + " plot {params.figures} {params.summaries} {params.out} > {log} 2>&1"


rule plots:
    """Every figure. Redraw all from stored results: snakemake plots --forcerun plot"""
    input:
        [STUDY.plot_path(f, ext) for f in STUDY_FIGURES for ext in ("png", "pdf")],
