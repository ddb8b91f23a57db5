# dlsci: pretrain -> finetune -> prune (data | network) -> distill -> analyze -> plot.
#
#   snakemake --cores all                 the whole study in config/config.yaml
#   snakemake --cores all plots           every figure (from stored results when present)
#   snakemake --cores all plots --forcerun plot
#                                         redraw every figure, no training
#
# The science lives in the `workflow` package; rules only wire files to its
# command line. (`workflow` is also Snakemake's own global here: never rebind it.)

import copy

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: "config/config.yaml"


# A study given with --configfile is complete: it replaces the embedded default
# instead of merging into it, so no default setting leaks into it (--config still
# overrides single keys of whichever study runs).
if workflow.config_settings.configfiles:
    config.clear()
    config.update(copy.deepcopy(dict(workflow.config_settings.overwrite_config)))


include: "rules/common.smk"


# Snakemake's own schema check; common.smk has already refused a bad config
# with a more specific message, so this only confirms it.
validate(config, "config/schema.yaml")


include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/finetune.smk"
include: "rules/prune.smk"
include: "rules/analyze.smk"
include: "rules/plot.smk"


rule all:
    default_target: True
    input:
        rules.plots.input,
        [STUDY.summary_path(name) for name in STUDY.summaries()],
