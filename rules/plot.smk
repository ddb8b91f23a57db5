from workflow.plots import FIGURES, drawable, figure_summaries

# The summaries this study has, and the figures they are enough for.
STUDY_SUMMARIES = list(STUDY.summaries())
STUDY_FIGURES = [f for f in FIGURES if drawable(f, STUDY_SUMMARIES)]


localrules:
    plot,
    plots,


rule plot:
    """One figure, drawn from summaries alone, as PNG and PDF."""
    input:
        unpack(lambda w: {name: STUDY.summary_path(name) for name in figure_summaries(w.figure, STUDY_SUMMARIES)}),
    output:
        png=f"{R}/plots/{{figure}}.png",
        pdf=f"{R}/plots/{{figure}}.pdf",
    params:
        summaries=lambda w, input: " ".join(f"--summary {name}={path}" for name, path in input.items()),
    wildcard_constraints:
        figure="|".join(FIGURES),
    conda:
        ENV
    log:
        f"{R}/logs/plots/{{figure}}.log",
    shell:
        JOB + " plot {wildcards.figure} {params.summaries} --out {output.png} --out {output.pdf} > {log} 2>&1"


rule plots:
    """Every figure. Redraw all from stored results: snakemake plots --forcerun plot"""
    input:
        [STUDY.plot_path(f, ext) for f in STUDY_FIGURES for ext in ("png", "pdf")],
