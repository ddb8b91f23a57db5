# Every training run is trained by its pack's job (workflow.packs): one rule per pack,
# whose outputs are its runs' model.pt and metrics.zarr, each in the run's own folder.
# Asking for one run's file runs its pack. The run is the unit of caching: the outputs are
# update() outputs, which Snakemake neither deletes before the job nor loses when it fails
# (it restores them), and the job trains only the runs not stored for their key
# (workflow.cache), so a pack that gains a run leaves its finished runs as they are.
# A pack's rule is named for the layout of its stage's run ids (which starts with the
# stage's name) and the pack, e.g. finetune_a47f3f28_0, and its log for the rule
# (logs/packs/finetune_a47f3f28_0.log); `snakemake --list-rules` says what each holds.
# `--set-resources finetune:...` (or a profile's set-resources) names the layout and
# applies to each of its packs.
import re

from workflow.runs import digest

TRAIN_RULES = {
    "pretrain": ("pretrain", 0),
    "finetune_scratch": ("finetune", 0),  # finetune/scratch/s<seed>: no source
    "finetune": ("finetune", 1),
    "ensemble_member": ("ensemble", 0),
    "prune_data": ("prune_data", 0),
    "distill": ("distill", 0),
    "prune_network_dense": ("prune_network", 0),
    "prune_network": ("prune_network", 1),
    "random_teacher": ("random_teacher", 0),
    "zoo": ("zoo", 0),
}


def layout_rule(run):
    """The rule name of a run's layout: its stage, and whether its id has the stage's optional part."""
    stage = run.split("/", 1)[0]
    return next(name for name, (s, layout) in TRAIN_RULES.items()
                if s == stage and re.fullmatch(layout_regex(s, layout), run))


def give_stage_resources(rule_name, layout):
    """Give a pack's rule what a profile or --set-resources gives its layout (`pretrain`,
    `finetune`, ...), as Snakemake gives a rule the entry of its own name."""
    parsed = getattr(workflow.resource_settings, "_parsed_overwrite_resources", {})
    if layout in parsed:
        workflow.get_rule(rule_name).resources.update(parsed[layout])


PACK_OPTS = RUN_OPTS + (
    f" --checkpoint-every {config['checkpoint_every']}" if config["checkpoint_every"] else ""
)

def pack_rule(pack):
    """The name of a pack's rule: its layout, then its digest and block."""
    return layout_rule(pack.runs[0]) + "_" + re.sub(r"\W", "_", pack.id.split("/", 1)[1])


def runs_text(runs):
    """A pack's runs for its rule's description: all of a few, the ends of many."""
    return ", ".join(runs) if len(runs) <= 4 else f"{runs[0]}, {runs[1]}, ... {runs[-1]}"


def describe_rule(name, text):
    """What `snakemake --list-rules` prints for a rule made in a loop (a docstring must be literal)."""
    workflow.get_rule(name).docstring = text


PACKS = {pack.id: pack for pack in STUDY.packs()}

for _pack in PACKS.values():
    _job = STUDY.pack_job(_pack)
    _base = layout_rule(_pack.runs[0])
    _name = pack_rule(_pack)

    rule:
        name:
            _name
        input:
            list(dict.fromkeys(_job.inputs.values())),
        output:
            [update(STUDY.path(run, "model.pt")) for run in _pack.runs]
            + [update(directory(STUDY.path(run, "metrics.zarr"))) for run in _pack.runs],
        params:  # functions, bound now: params given as strings are formatted with wildcards
            job=lambda w, pack=_pack.id: pack,
            # What the job is keyed on: a digest of every member's spec and the stack mode
            # (the whole description would fill a dry run's reasons; it is beside the log).
            spec=lambda w, key=digest(STUDY.pack_description(_pack)): key,
            checkpoint=lambda w, path=STUDY.pack_checkpoint(_pack): path if config["checkpoint_every"] else None,
            options=lambda w: PACK_OPTS,
        conda:
            ENV
        threads: config["threads"]
        log:
            f"{R}/logs/packs/{_name}.log",
        script:
            "scripts/job.py"

    give_stage_resources(_name, _base)
    describe_rule(_name, f"Train {len(_pack.runs)} run(s) of stage {_pack.stage} in one job: {runs_text(_pack.runs)}.")
    RECOMPUTE_RULES.add(_name)
