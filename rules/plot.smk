from workflow.plots import FIGURES


localrules:
    plot,
    plots,


rule plot:
    """One figure, drawn from summaries alone, as PNG and PDF."""
    input:
        unpack(lambda w: {name: STUDY.summary_path(name) for name in FIGURES[w.figure][1]}),
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


# The figures this study has the summaries for.
STUDY_FIGURES = [f for f, (_, needs) in FIGURES.items() if set(needs) <= set(STUDY.summaries())]


rule plots:
    """Every figure. Redraw all from stored results: snakemake plots --forcerun plot"""
    input:
        [STUDY.plot_path(f, ext) for f in STUDY_FIGURES for ext in ("png", "pdf")],
