"""Command line: ``python -m workflow <command> ...``, one command per kind of job.

The workflow's rules call these; so can a researcher, e.g. to rerun one stage on a
GPU by hand. Specs are JSON (what :meth:`workflow.study.Study.spec` returns).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence


@dataclass(frozen=True)
class Command:
    """One subcommand: its help line, what it adds to its parser, and what it runs."""

    help: str
    options: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], None]


# Each command is registered once, by `command`, with its options beside its handler.
# Handlers import what they need, so that `--help` is instant and plotting needs no torch.
COMMANDS: dict[str, Command] = {}


def command(
    name: str, help: str, options: Callable[[argparse.ArgumentParser], None]
) -> Callable[[Callable[[argparse.Namespace], None]], Callable[[argparse.Namespace], None]]:
    """Register the decorated handler as the subcommand ``name`` with the options ``options`` adds."""

    def register(run: Callable[[argparse.Namespace], None]) -> Callable[[argparse.Namespace], None]:
        if name in COMMANDS:
            raise ValueError(f"command {name!r} registered twice")
        COMMANDS[name] = Command(help, options, run)
        return run

    return register


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda[:N]")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _checkpoints(p: argparse.ArgumentParser, file: str) -> None:
    p.add_argument("--checkpoints", help=f"resumable training: the folder of checkpoints, {file} "
                   "(outside --out, so a failed job's clean-up keeps it)")
    p.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints")


def _recompute(p: argparse.ArgumentParser) -> None:
    p.add_argument("--recompute", action="store_true", help="compute every result, even those already stored "
                   "for exactly their spec and inputs (by default they are left as they are)")


def _stack(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stack", default="sequential", choices=("auto", "stacked", "sequential"),
                   help="how the models of a pack step: one after another (sequential), as one "
                   "vmapped model (stacked), or stacked on CUDA and sequential elsewhere (auto)")


@contextlib.contextmanager
def _announce_preemption(what: str) -> Iterator[None]:
    """Say on stderr that a job stopped by SLURM's signal saved its state (it still exits 128 + signal)."""
    from workflow.checkpoint import Preempted

    try:
        yield
    except Preempted as stop:
        print(f"{what}: {stop}", file=sys.stderr)
        raise


def _two_models(p: argparse.ArgumentParser, what: str, settings: str, *, one: bool = False) -> None:
    """The options of an analysis of two models: their inputs and names, its settings and output.

    ``one``: model b may be left out, to analyse model a against itself.
    """
    itself = " (default: model a against itself)" if one else ""
    p.add_argument("--a", required=True, help=f"{what} of model a")
    p.add_argument("--b", required=not one, help=f"{what} of model b{itself}")
    p.add_argument("--name-a", required=True)
    p.add_argument("--name-b", required=not one, help="(default: --name-a)" if one else None)
    p.add_argument("--settings", required=True, help=f"JSON: {settings}")
    p.add_argument("--out", required=True, help="analysis.zarr")


# --- the commands, in the order --help lists them ---------------------------------------------


def _data_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", required=True, help="JSON: name, args, train_size")
    p.add_argument("--out", required=True)


@command("data", "make a dataset file", _data_options)
def _data(args: argparse.Namespace) -> None:
    from workflow.datasets import make_data

    make_data(json.loads(args.spec), args.out)


def _train_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", required=True, help="JSON spec of the run")
    p.add_argument("--out", required=True, help="the run's folder")
    p.add_argument("--data", required=True, help="the task's .npz file")
    p.add_argument("--parent", help="model.pt of the parent run")
    p.add_argument("--scores", help="scores.zarr (data pruning, distillation)")
    p.add_argument("--teacher", help="model.pt of the teacher (distillation)")
    _checkpoints(p, "<folder>/<run>.pt")
    _common(p)


@command("train", "train one run (any training stage)", _train_options)
def _train(args: argparse.Namespace) -> None:
    from workflow.jobs import train_run

    spec = json.loads(args.spec)
    with _announce_preemption(spec["run"]):
        train_run(
            spec, args.out, data_path=args.data, parent=args.parent, scores=args.scores,
            teacher=args.teacher, device=args.device, threads=args.threads, progress=not args.no_progress,
            checkpoint=f"{args.checkpoints}/{spec['run']}.pt" if args.checkpoints else None,
            checkpoint_every=args.checkpoint_every,
        )


def _train_pack_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pack", required=True, help="JSON file: the pack's runs (spec, folder, input files), "
                   "data and stack mode, as the workflow writes it beside the pack's log")
    p.add_argument("--checkpoint", help="resumable training: the pack's checkpoint file "
                   "(outside every run's folder, so a failed job's clean-up keeps it)")
    p.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints")
    _recompute(p)
    _common(p)


@command("train-pack", "train a pack of runs in one loop (any training stage)", _train_pack_options)
def _train_pack(args: argparse.Namespace) -> None:
    from pathlib import Path

    from workflow.jobs import train_pack_job

    pack = json.loads(Path(args.pack).read_text())
    with _announce_preemption(f"pack {pack['pack']}"):
        train_pack_job(pack, device=args.device, threads=args.threads, progress=not args.no_progress,
                       checkpoint=args.checkpoint, checkpoint_every=args.checkpoint_every,
                       recompute=args.recompute)


def _scores_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--model", help="model.pt whose embedding is scored (prototypes)")
    p.add_argument("--out", required=True, help="scores.zarr")
    _checkpoints(p, "<folder>/scores/<score>.pt")
    _stack(p)
    _recompute(p)
    _common(p)


@command("scores", "score every training example", _scores_options)
def _scores(args: argparse.Namespace) -> None:
    from workflow.jobs import compute_scores

    spec = json.loads(args.spec)
    with _announce_preemption(f"scores {spec['score']}"):
        compute_scores(
            spec, args.out, data_path=args.data, model_path=args.model, device=args.device,
            threads=args.threads, progress=not args.no_progress,
            checkpoint=f"{args.checkpoints}/scores/{spec['score']}.pt" if args.checkpoints else None,
            checkpoint_every=args.checkpoint_every, stack=args.stack, recompute=args.recompute,
        )


def _activations_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--settings", required=True, help="JSON: probe_size, layers (null: the model's), conv (flatten | pool)")
    p.add_argument("--out", required=True, help="activations.zarr")
    _common(p)


@command("activations", "record a model's activations on the probe set", _activations_options)
def _activations(args: argparse.Namespace) -> None:
    from workflow.analysis.stages import record

    settings = json.loads(args.settings)
    record(args.model, args.data, args.out, probe_size=settings["probe_size"], layers=settings.get("layers"),
           conv=settings.get("conv", "flatten"), device=args.device, threads=args.threads)


def _similarity_options(p: argparse.ArgumentParser) -> None:
    _two_models(p, "activations.zarr", "measures, chunk, batch, cca_dims", one=True)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")


@command("similarity", "similarity measures between all layers of two models, or of one", _similarity_options)
def _similarity(args: argparse.Namespace) -> None:
    from workflow.analysis.stages import compare

    compare(args.a, args.b, args.out, model_a=args.name_a, model_b=args.name_b or args.name_a,
            settings=json.loads(args.settings), threads=args.threads)


def _spectra_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--settings", required=True, help="JSON: the analyze.spectra settings and probe_size")
    p.add_argument("--out", required=True, help="analysis.zarr")
    _common(p)


@command("spectra", "NTK and Hessian spectra and weight ranks of one model", _spectra_options)
def _spectra(args: argparse.Namespace) -> None:
    from workflow.analysis.stages import spectra

    spectra(args.model, args.data, args.out, settings=json.loads(args.settings), device=args.device,
            threads=args.threads)


def _pair_of_models_options(settings: str) -> Callable[[argparse.ArgumentParser], None]:
    """The options of an analysis that loads two models and the data."""

    def options(p: argparse.ArgumentParser) -> None:
        _two_models(p, "model.pt", settings)
        p.add_argument("--data", required=True)
        _common(p)

    return options


@command("relative", "relative vs absolute representations of two models, and stitching",
         _pair_of_models_options("anchors, seed"))
def _relative(args: argparse.Namespace) -> None:
    from workflow.analysis.stages import relative

    relative(args.a, args.b, args.data, args.out, names=(args.name_a, args.name_b),
             settings=json.loads(args.settings), device=args.device, threads=args.threads)


@command("connectivity", "loss and error on the line between two models (a at alpha = 0)",
         _pair_of_models_options("alphas, bn_batches"))
def _connectivity(args: argparse.Namespace) -> None:
    from workflow.analysis.stages import connectivity

    connectivity(args.a, args.b, args.data, args.out, names=(args.name_a, args.name_b),
                 settings=json.loads(args.settings), device=args.device, threads=args.threads)


def _wiseft_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--start", required=True, help="model.pt at alpha = 0 (the linear probe)")
    p.add_argument("--end", required=True, help="model.pt at alpha = 1 (the fine-tuned model)")
    p.add_argument("--alphas", required=True, help="JSON list of alphas in [0, 1]")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="wiseft.zarr")
    _recompute(p)
    _common(p)


@command("wiseft", "WiSE-FT: evaluate weights interpolated between two models", _wiseft_options)
def _wiseft(args: argparse.Namespace) -> None:
    from workflow.jobs import wiseft

    wiseft(args.start, args.end, json.loads(args.alphas), args.out, data_path=args.data,
           device=args.device, threads=args.threads, recompute=args.recompute)


def _ensemble_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--member", action="append", required=True, help="model.pt of a member; repeatable")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="ensemble.zarr")
    _recompute(p)
    _common(p)


@command("ensemble", "evaluate models, their ensemble and their uniform soup", _ensemble_options)
def _ensemble(args: argparse.Namespace) -> None:
    from workflow.jobs import ensemble

    ensemble(args.member, args.out, data_path=args.data, device=args.device, threads=args.threads,
             recompute=args.recompute)


def _collect_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--entries", help='JSON: [[{"seed": 0}, "path/metrics.zarr"], ...]; with --out')
    p.add_argument("--out", help="the summary store")
    p.add_argument("--summaries", help='JSON file: {"summaries": {"<name>": {"out": "...", "entries": [...]}, ...}, '
                   '"index": {"out": {"zarr": "...", "csv": "..."}, "runs": [...]}}: every summary of a study and '
                   "its run index (and a zoo's per-model table), as the workflow writes it beside its log")


@command("collect", "gather per-run stores into summaries", _collect_options)
def _collect(args: argparse.Namespace) -> None:
    from pathlib import Path

    from workflow.jobs import collect, entries_from, parse_entries, write_run_index, write_zoo_models

    if (args.summaries is None) == (args.entries is None) or (args.entries is None) != (args.out is None):
        raise SystemExit("collect: give --summaries FILE, or --entries JSON with --out")
    if args.summaries:
        study = json.loads(Path(args.summaries).read_text())
        for summary in study["summaries"].values():
            collect(entries_from(summary["entries"]), summary["out"], summary.get("attrs"))
        write_run_index(study["index"]["runs"], study["index"]["root"], **study["index"]["out"])
        if "zoo_models" in study:
            write_zoo_models(study["zoo_models"]["summaries"], **study["zoo_models"]["out"])
    else:
        collect(parse_entries(args.entries), args.out)


def _analyze_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--batch", required=True, help="JSON file: the batch's tasks, data and settings per "
                   "kind, as the workflow writes it beside the batch's log")
    _recompute(p)
    _common(p)


@command("analyze", "run a batch of analyses (activations, similarity, relative, connectivity, spectra, manifold)",
         _analyze_options)
def _analyze(args: argparse.Namespace) -> None:
    from pathlib import Path

    from workflow.analysis.stages import run_batch

    run_batch(json.loads(Path(args.batch).read_text()), device=args.device, threads=args.threads,
              progress=not args.no_progress, recompute=args.recompute)


def _plot_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("figure", nargs="+")
    p.add_argument("--summary", action="append", default=[], metavar="NAME=PATH", required=True)
    p.add_argument("--out", action="append", required=True,
                   help="output file (.png, .pdf, .svg); repeatable; with several figures, a pattern "
                   "with {figure} in it, e.g. plots/{figure}.png")
    p.add_argument("--dpi", type=int, default=150, help="PNG resolution (the README's small copies: 60)")


@command("plot", "draw figures from summaries", _plot_options)
def _plot(args: argparse.Namespace) -> None:
    from workflow.plots import render

    summaries = dict(s.split("=", 1) for s in args.summary)
    if len(args.figure) > 1 and not all("{figure}" in out for out in args.out):
        raise SystemExit("plot: with several figures, every --out must hold {figure}")
    for figure in args.figure:
        render(figure, summaries, [out.replace("{figure}", figure) for out in args.out], dpi=args.dpi)


def _report_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("results", nargs="?", default="results", help="the study's results folder")
    p.add_argument("--html", help="write the tables to this HTML file instead of printing them")
    p.add_argument("--config", help="JSON: the study's resolved config, written to --config-out as YAML")
    p.add_argument("--config-out", help="where the resolved config goes (with --config)")


@command("report", "print the headline numbers of a study from its summaries", _report_options)
def _report(args: argparse.Namespace) -> None:
    from pathlib import Path

    from workflow import storage
    from workflow.report import report, report_html

    if (args.config is None) != (args.config_out is None):
        raise SystemExit("report: give --config with --config-out")
    if args.config is not None:
        import yaml

        with storage.atomic_path(args.config_out) as tmp:
            Path(tmp).write_text(yaml.safe_dump(json.loads(args.config), sort_keys=False))
    if args.html is None:
        print(report(args.results))
        return
    with storage.atomic_path(args.html) as tmp:
        Path(tmp).write_text(report_html(args.results, f"Tables of {args.results}"))


# --- the entry point ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The parser of every registered command."""
    parser = argparse.ArgumentParser(prog="python -m workflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, cmd in COMMANDS.items():
        cmd.options(sub.add_parser(name, help=cmd.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    COMMANDS[args.command].run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
