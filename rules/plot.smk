from workflow.plots import FIGURES, REPORT_CATEGORY, drawable

# The summaries this study has, and the figures they are enough for.
STUDY_SUMMARIES = list(STUDY.summaries())
STUDY_FIGURES = [f for f in FIGURES if drawable(f, STUDY_SUMMARIES)]

# Each figure's PNG is in Snakemake's report (`snakemake --report report.html`) under the
# question it answers (workflow.plots.REPORT_CATEGORIES), with report/<figure>.rst beside
# this file as its caption.


def reported_figure(figure):
    """A figure's PNG as a report item: its category and caption."""
    return report(STUDY.plot_path(figure, "png"), caption=f"report/{figure}.rst",
                  category=REPORT_CATEGORY[figure], labels={"figure": figure})


localrules:
    plot,
    plots,


if STUDY_FIGURES:

    rule plot:
        """Every figure, drawn from summaries alone, as PNG and PDF, in one job; beside them, for
        the report, the tables of `python -m workflow report` as HTML and the study's resolved
        config (the schema's defaults filled in)."""
        input:
            unpack(lambda w: {name: STUDY.summary_path(name) for name in STUDY_SUMMARIES}),
        output:
            [reported_figure(f) for f in STUDY_FIGURES],
            [STUDY.plot_path(f, "pdf") for f in STUDY_FIGURES],
            tables=report(f"{R}/report/tables.html", caption="report/tables.rst", category="Study",
                          labels={"file": "tables"}),
            config=report(f"{R}/report/config.yaml", caption="report/config.rst", category="Study",
                          labels={"file": "resolved config"}),
        params:
            figures=" ".join(STUDY_FIGURES),
            summaries=lambda w, input: " ".join(f"--summary {name}={path}" for name, path in input.items()),
            out=lambda w: " ".join(f"--out '{STUDY.plot_path('{figure}', ext)}'" for ext in ("png", "pdf")),
            config=json.dumps(STUDY.config),
        conda:
            ENV
        log:
            f"{R}/logs/plots/plots.log",
        shell:
            JOB + " plot {params.figures} {params.summaries} {params.out} > {log} 2>&1 && "
            + JOB + " report {R} --html {output.tables} --config {params.config:q} --config-out {output.config}"
            " >> {log} 2>&1"


rule plots:
    """Every figure. Redraw all from stored results: snakemake plots --forcerun plot"""
    input:
        [STUDY.plot_path(f, ext) for f in STUDY_FIGURES for ext in ("png", "pdf")],
