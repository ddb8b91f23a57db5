"""Command line: ``python -m workflow <command> ...``, one command per kind of job.

The workflow's rules call these; so can a researcher, e.g. to rerun one stage on a
GPU by hand. Specs are JSON (what :meth:`workflow.study.Study.spec` returns).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from typing import Iterator, Sequence


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda[:N]")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _checkpoints(p: argparse.ArgumentParser, file: str) -> None:
    p.add_argument("--checkpoints", help=f"resumable training: the folder of checkpoints, {file} "
                   "(outside --out, so a failed job's clean-up keeps it)")
    p.add_argument("--checkpoint-every", type=int, default=1, help="epochs between checkpoints")


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m workflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("data", help="make a dataset file")
    p.add_argument("--spec", required=True, help="JSON: name, args, train_size")
    p.add_argument("--out", required=True)

    p = sub.add_parser("train", help="train one run (any training stage)")
    p.add_argument("--spec", required=True, help="JSON spec of the run")
    p.add_argument("--out", required=True, help="the run's folder")
    p.add_argument("--data", required=True, help="the task's .npz file")
    p.add_argument("--parent", help="model.pt of the parent run")
    p.add_argument("--scores", help="scores.zarr (data pruning, distillation)")
    p.add_argument("--teacher", help="model.pt of the teacher (distillation)")
    _checkpoints(p, "<folder>/<run>.pt")
    _common(p)

    p = sub.add_parser("scores", help="score every training example")
    p.add_argument("--spec", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--model", help="model.pt whose embedding is scored (prototypes)")
    p.add_argument("--out", required=True, help="scores.zarr")
    _checkpoints(p, "<folder>/scores/<score>.pt")
    _common(p)

    p = sub.add_parser("activations", help="record a model's activations on the probe set")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--settings", required=True, help="JSON: probe_size, layers (null: the model's), conv (flatten | pool)")
    p.add_argument("--out", required=True, help="activations.zarr")
    _common(p)

    p = sub.add_parser("similarity", help="similarity measures between all layers of two models, or of one")
    _two_models(p, "activations.zarr", "measures, chunk, batch, cca_dims", one=True)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")

    p = sub.add_parser("spectra", help="NTK and Hessian spectra and weight ranks of one model")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--settings", required=True, help="JSON: the analyze.spectra settings and probe_size")
    p.add_argument("--out", required=True, help="analysis.zarr")
    _common(p)

    p = sub.add_parser("relative", help="relative vs absolute representations of two models, and stitching")
    _two_models(p, "model.pt", "anchors, seed")
    p.add_argument("--data", required=True)
    _common(p)

    p = sub.add_parser("connectivity", help="loss and error on the line between two models (a at alpha = 0)")
    _two_models(p, "model.pt", "alphas, bn_batches")
    p.add_argument("--data", required=True)
    _common(p)

    p = sub.add_parser("wiseft", help="WiSE-FT: evaluate weights interpolated between two models")
    p.add_argument("--start", required=True, help="model.pt at alpha = 0 (the linear probe)")
    p.add_argument("--end", required=True, help="model.pt at alpha = 1 (the fine-tuned model)")
    p.add_argument("--alphas", required=True, help="JSON list of alphas in [0, 1]")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="wiseft.zarr")
    _common(p)

    p = sub.add_parser("ensemble", help="evaluate models, their ensemble and their uniform soup")
    p.add_argument("--member", action="append", required=True, help="model.pt of a member; repeatable")
    p.add_argument("--data", required=True)
    p.add_argument("--out", required=True, help="ensemble.zarr")
    _common(p)

    p = sub.add_parser("collect", help="gather per-run stores into one summary")
    p.add_argument("--entries", required=True, help='JSON: [[{"seed": 0}, "path/metrics.zarr"], ...]')
    p.add_argument("--out", required=True)

    p = sub.add_parser("plot", help="draw one figure from summaries")
    p.add_argument("figure")
    p.add_argument("--summary", action="append", default=[], metavar="NAME=PATH", required=True)
    p.add_argument("--out", action="append", required=True, help="output file (.png, .pdf, .svg); repeatable")

    p = sub.add_parser("report", help="print the headline numbers of a study from its summaries")
    p.add_argument("results", nargs="?", default="results", help="the study's results folder")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Imported here so that `--help` is instant and plotting needs no torch.
    if args.command == "data":
        from workflow.datasets import make_data

        make_data(json.loads(args.spec), args.out)
    elif args.command == "train":
        from workflow.jobs import train_run

        spec = json.loads(args.spec)
        with _announce_preemption(spec["run"]):
            train_run(
                spec, args.out, data_path=args.data, parent=args.parent, scores=args.scores,
                teacher=args.teacher, device=args.device, threads=args.threads, progress=not args.no_progress,
                checkpoint=f"{args.checkpoints}/{spec['run']}.pt" if args.checkpoints else None,
                checkpoint_every=args.checkpoint_every,
            )
    elif args.command == "scores":
        from workflow.jobs import compute_scores

        spec = json.loads(args.spec)
        with _announce_preemption(f"scores {spec['score']}"):
            compute_scores(
                spec, args.out, data_path=args.data, model_path=args.model, device=args.device,
                threads=args.threads, progress=not args.no_progress,
                checkpoint=f"{args.checkpoints}/scores/{spec['score']}.pt" if args.checkpoints else None,
                checkpoint_every=args.checkpoint_every,
            )
    elif args.command == "activations":
        from workflow.analysis.stages import record

        settings = json.loads(args.settings)
        record(args.model, args.data, args.out, probe_size=settings["probe_size"], layers=settings.get("layers"),
               conv=settings.get("conv", "flatten"), device=args.device, threads=args.threads)
    elif args.command == "similarity":
        from workflow.analysis.stages import compare

        compare(args.a, args.b, args.out, model_a=args.name_a, model_b=args.name_b or args.name_a,
                settings=json.loads(args.settings), threads=args.threads)
    elif args.command == "spectra":
        from workflow.analysis.stages import spectra

        spectra(args.model, args.data, args.out, settings=json.loads(args.settings), device=args.device,
                threads=args.threads)
    elif args.command == "relative":
        from workflow.analysis.stages import relative

        relative(args.a, args.b, args.data, args.out, names=(args.name_a, args.name_b),
                 settings=json.loads(args.settings), device=args.device, threads=args.threads)
    elif args.command == "connectivity":
        from workflow.analysis.stages import connectivity

        connectivity(args.a, args.b, args.data, args.out, names=(args.name_a, args.name_b),
                     settings=json.loads(args.settings), device=args.device, threads=args.threads)
    elif args.command == "wiseft":
        from workflow.jobs import wiseft

        wiseft(args.start, args.end, json.loads(args.alphas), args.out, data_path=args.data,
               device=args.device, threads=args.threads)
    elif args.command == "ensemble":
        from workflow.jobs import ensemble

        ensemble(args.member, args.out, data_path=args.data, device=args.device, threads=args.threads)
    elif args.command == "collect":
        from workflow.jobs import collect, parse_entries

        collect(parse_entries(args.entries), args.out)
    elif args.command == "plot":
        from workflow.plots import render

        summaries = dict(s.split("=", 1) for s in args.summary)
        render(args.figure, summaries, args.out)
    elif args.command == "report":
        from workflow.report import report

        print(report(args.results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
