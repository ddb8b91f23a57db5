"""Fine-tuning: every method (:data:`workflow.finetune.FINETUNE`) from every pretrained
model, scratch as the baseline, the extra members of ensembles, and the WiSE-FT and
ensemble evaluations built on them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Mapping

from workflow import axes
from workflow.runs import NO_SOURCE, run_id
from workflow.stages import TrainingSetup, TrainingStage
from workflow.stages.pretrain import sources

if TYPE_CHECKING:
    from pathlib import Path

    from workflow.study import Study

# Fine-tuning methods that take the study's finetune.lora settings (kept here, not
# imported from workflow.finetune, so that planning a study needs no torch).
LORA_METHODS = ("lora", "eva")
# Fine-tuning methods that change the pretrained body: WiSE-FT interpolates from the
# linear probe (the pretrained body with a trained head) to each of them.
WISEFT_METHODS = ("full", "bn_only", "lora", "eva")
# Ensemble members beyond the first train from this seed (+ 1000 x member + seed).
MEMBER_SEED = 30_000


class Finetune(TrainingStage):
    """Each method from each source's pretrained model; scratch (no source) once per seed;
    and each of ``random_features`` from the model's random initialisation (source none)."""

    name = "finetune"
    summary = "finetune"
    method_axis = "finetuning"
    analysed = True

    def summary_entries(self, study: Study, r: Mapping[str, Any]) -> list[dict[str, Any]]:
        return [axes.model_coords(r)]

    def other_summaries(self, study: Study) -> dict[str, list[tuple[dict[str, Any], str]]]:
        """WiSE-FT per fine-tuned run (the line from its linear probe), ensembles per source, kind and seed."""
        return {
            "wiseft": [(axes.model_coords(ft), path) for path, (_, ft) in wiseft_pairs(study).items()],
            "ensemble": [({"source": src, "kind": kind, "seed": s}, ensemble_path(study, src, kind, s))
                         for (src, kind, s) in ensemble_members(study.config)],
        }

    def lineage(self, study: Study, r: Mapping[str, Any]) -> tuple[str, str] | None:
        parent = self.parent(study, r)
        return ("finetune", parent) if parent is not None else None

    def connections(self, study: Study) -> list[tuple[dict[str, Any], tuple[str, str]]]:
        """The linear probe and full fine-tuning from one pretrained model (the pretrained body,
        moved or not); full fine-tuning and an independent sibling (ensemble kind ``seeds``)."""
        ft = study.config.get("finetune", {"methods": [], "seeds": []})
        kinds = ft.get("ensemble", {}).get("kinds", [])
        out = []
        for src in sources(study.config):
            for s in ft["seeds"]:
                full = run_id("finetune", source=src, method="full", seed=s)
                if {"full", "linear_probe"} <= set(ft["methods"]):
                    probe = run_id("finetune", source=src, method="linear_probe", seed=s)
                    out.append(({**axes.pair_coords("probe_full", src), "seed": s}, (probe, full)))
                if "seeds" in kinds:
                    sibling = run_id("ensemble", source=src, kind="seeds", seed=s, member=1)
                    out.append(({**axes.pair_coords("siblings", src), "seed": s}, (full, sibling)))
        return out

    def runs(self, config: Mapping[str, Any]) -> list[str]:
        if "finetune" not in config:
            return []
        ft = config["finetune"]
        return [
            run_id("finetune", method=m, seed=s) if m == "scratch" else run_id("finetune", source=src, method=m, seed=s)
            for m in ft["methods"] for src in ([NO_SOURCE] if m == "scratch" else sources(config)) for s in ft["seeds"]
        ] + [run_id("finetune", source=NO_SOURCE, method=m, seed=s)
             for m in ft.get("random_features", []) for s in ft["seeds"]]

    def parent(self, study: Study, r: Mapping[str, Any]) -> str | None:
        if r.get("source", NO_SOURCE) == NO_SOURCE:
            return None
        return run_id("pretrain", source=r["source"], seed=r["seed"])

    def spec(self, study: Study, r: Mapping[str, Any]) -> dict[str, Any]:
        spec: dict[str, Any] = {"method": r["method"]}
        if r["method"] in LORA_METHODS:
            lora = study.config["finetune"]["lora"]
            # eva_rho only shapes EVA: a LoRA run's spec (and so its cache key) leaves it out
            spec["lora"] = {k: v for k, v in lora.items() if r["method"] == "eva" or k != "eva_rho"}
        return spec

    def prepare(self, spec: Mapping[str, Any], setup: TrainingSetup, inputs: Mapping[str, Path]) -> None:
        from workflow import storage
        from workflow.finetune import FINETUNE, FinetuneSetup

        parent = storage.load_torch(inputs["parent"])["state_dict"] if "parent" in inputs else None
        settings = {"lora": spec["lora"]} if "lora" in spec else {}
        method = FinetuneSetup(settings, setup.data.x_train, setup.cfg.batch_size, setup.seed)
        FINETUNE[spec["method"]](setup.model, parent, method)


class EnsembleMember(TrainingStage):
    """A member beyond the first of an ensemble from one pretrained checkpoint: an
    independent fine-tuning run (``seeds``), or a snapshot cycle from the previous
    cycle (``sse``) or from the fine-tuned model (``starsse``)."""

    name = "ensemble"
    stackable = ("member",)

    def runs(self, config: Mapping[str, Any]) -> list[str]:
        return [run for members in ensemble_members(config).values() for run in members[1:]]

    def parent(self, study: Study, r: Mapping[str, Any]) -> str | None:
        src, seed, kind, member = r["source"], r["seed"], r["kind"], r["member"]
        if kind == "seeds":  # another fine-tuning run from the pretrained model
            return run_id("pretrain", source=src, seed=seed)
        if kind == "sse" and member > 1:  # the next cycle of the snapshot sequence
            return run_id("ensemble", source=src, kind="sse", seed=seed, member=member - 1)
        return run_id("finetune", source=src, method="full", seed=seed)  # a cycle from the fine-tuned model

    def spec(self, study: Study, r: Mapping[str, Any]) -> dict[str, Any]:
        ens = study.config["finetune"]["ensemble"]
        spec = {"kind": r["kind"], "member": r["member"], "train_seed": MEMBER_SEED + 1000 * r["member"] + r["seed"],
                "train": study.train_config("finetune")}
        if r["kind"] != "seeds":  # one cycle: from its parent's weights, a fresh optimiser and schedule
            spec["train"] = {**spec["train"], **ens["cycle"]}
        return spec

    def prepare(self, spec: Mapping[str, Any], setup: TrainingSetup, inputs: Mapping[str, Path]) -> None:
        from workflow import storage
        from workflow.finetune import FINETUNE

        parent = storage.load_torch(inputs["parent"])["state_dict"]
        if spec["kind"] == "seeds":  # another full fine-tuning run from the pretrained model
            FINETUNE["full"](setup.model, parent)
        else:  # a snapshot cycle (SSE, StarSSE): from the parent's weights, head included
            setup.model.load_state_dict(parent)


def ensemble_members(config: Mapping[str, Any]) -> dict[tuple[str, str, int], list[str]]:
    """Each ensemble's (source, kind, seed) -> its members' runs, member 0 (the study's
    ``finetune/<source>/full`` run) first."""
    ens = config.get("finetune", {}).get("ensemble")
    if not ens:
        return {}
    return {
        (src, kind, s): [run_id("finetune", source=src, method="full", seed=s)]
        + [run_id("ensemble", source=src, kind=kind, seed=s, member=k) for k in range(1, ens["members"])]
        for src in sources(config) for kind in ens["kinds"] for s in config["finetune"]["seeds"]
    }


def ensembles(study: Study) -> dict[str, list[str]]:
    """Each ensemble's store path -> its members' runs, member 0 first: per source, kind and seed."""
    return {ensemble_path(study, *key): members for key, members in ensemble_members(study.config).items()}


def ensemble_path(study: Study, source: str, kind: str, seed: int) -> str:
    return f"{study.root}/analyze/ensemble/{source}/{kind}/s{seed}/ensemble.zarr"


def wiseft_pairs(study: Study) -> dict[str, tuple[str, str]]:
    """Each WiSE-FT store path -> (the linear probe, the fine-tuned run) it interpolates."""
    ft = study.config.get("finetune", {})
    if "wiseft" not in ft:
        return {}
    return {
        wiseft_path(study, src, m, s): (run_id("finetune", source=src, method="linear_probe", seed=s),
                                        run_id("finetune", source=src, method=m, seed=s))
        for src in study.sources() for m in ft["methods"] if m in WISEFT_METHODS for s in ft["seeds"]
    }


def wiseft_path(study: Study, source: str, method: str, seed: int) -> str:
    return f"{study.root}/analyze/wiseft/{source}/{method}/s{seed}/wiseft.zarr"
