"""Checking a study configuration before anything runs.

:func:`load_config` refuses a bad configuration with a message that names the key
and the values it allows, fills in the schema's defaults, and checks what a schema
cannot say (a teacher must be a run of the study, seeds must line up).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Mapping

import jsonschema
import yaml

SCHEMA = Path(__file__).resolve().parent.parent / "config" / "schema.yaml"
# The stages a study may have; each is optional (see config/schema.yaml).
STAGES = ("pretrain", "finetune", "prune_data", "distill", "prune_network")


class ConfigError(ValueError):
    """A study configuration that must not run."""


def _key(path: Any) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


def _resolve(schema: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    """Follow ``$ref`` and merge ``allOf`` so that properties and defaults are visible."""
    if "$ref" in schema:
        node: Any = root
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node[part]
        schema = {**_resolve(node, root), **{k: v for k, v in schema.items() if k != "$ref"}}
    for sub in schema.get("allOf", []):
        sub = _resolve(sub, root)
        schema = {**sub, **schema, "properties": {**sub.get("properties", {}), **schema.get("properties", {})}}
    return schema


def _describe(error: jsonschema.ValidationError, root: Mapping[str, Any], config: Any) -> str:
    key = _key(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(_resolve(error.schema, root).get("properties", {}))
        extra = sorted(set(error.instance) - set(allowed))
        where = "" if key == "<top level>" else f" under '{key}'"
        return f"unknown config key(s) {extra}{where}; allowed keys: {', '.join(allowed)}"
    if error.validator == "enum" and "propertyNames" in error.schema_path:
        node = config
        for part in error.absolute_path:
            node = node[part]
        return (
            f"config key '{key}.{error.instance}' is not a setting of {key}.name = {node.get('name')!r}; "
            f"allowed keys: {', '.join(map(str, error.validator_value))}"
        )
    if error.validator == "enum":
        return f"config key '{key}' = {error.instance!r} is not allowed; allowed values: {', '.join(map(str, error.validator_value))}"
    if error.validator == "pattern" and "description" in error.schema:
        return f"config key '{key}' = {error.instance!r} is not allowed: {error.schema['description']}"
    if error.validator == "required":
        return f"config key '{key}' is missing a required entry: {error.message}"
    return f"config key '{key}': {error.message}"


# JSON Schema counts 1e9 (a float with no fraction) as an integer; YAML gives it as a
# float, and an epoch count or a seed must be a whole number as written.
_Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        "integer", lambda checker, instance: isinstance(instance, int) and not isinstance(instance, bool)
    ),
)


def validate(config: Mapping[str, Any], schema_path: str | Path = SCHEMA) -> None:
    """Raise :class:`ConfigError` listing every violation of the schema."""
    schema = yaml.safe_load(Path(schema_path).read_text())
    validator = _Validator(schema)
    errors = sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(_describe(e, schema, config) for e in errors))


def fill_defaults(config: Mapping[str, Any], schema_path: str | Path = SCHEMA) -> dict[str, Any]:
    """A copy of ``config`` with every default of the schema filled in."""
    root = yaml.safe_load(Path(schema_path).read_text())

    def fill(node: Any, schema: Mapping[str, Any]) -> Any:
        schema = _resolve(schema, root)
        if not isinstance(node, dict):
            return node
        properties = schema.get("properties", {})
        for name, sub in properties.items():
            sub = _resolve(sub, root)
            if name not in node and "default" in sub:
                node[name] = copy.deepcopy(sub["default"])
            if name in node:
                node[name] = fill(node[name], sub)
        if isinstance(schema.get("additionalProperties"), dict):  # a mapping by name, e.g. data.sources
            for name in set(node) - set(properties):
                node[name] = fill(node[name], schema["additionalProperties"])
        return node

    return fill(copy.deepcopy(dict(config)), root)


def check_semantics(config: Mapping[str, Any]) -> None:
    """What the schema cannot express: cross-references between sections."""
    from workflow.datasets import DATASETS, dataset_problems, dataset_settings, split_problems, train_examples
    from workflow.stages.registry import TRAINING_STAGES

    problems = []
    stages = [stage for stage in STAGES if stage in config]
    sources: dict[str, Any] = config["data"].get("sources", {})
    if "pretrain" in stages and not sources:
        problems.append("config key 'data.sources' is missing: the pretrain stage trains on each of its tasks")
    if "none" in sources:
        problems.append("config key 'data.sources.none' is not allowed: 'none' stands for no pretraining (scratch)")
    tasks = {f"sources.{name}": spec for name, spec in sources.items()} | {"target": config["data"]["target"]}
    for task, spec in tasks.items():
        allowed = dataset_settings(spec["name"])
        unknown = sorted(set(spec.get("args") or {}) - set(allowed))
        if unknown:
            problems.append(
                f"unknown config key(s) {unknown} under 'data.{task}.args'; "
                f"allowed keys for {spec['name']}: {', '.join(sorted(allowed))}"
            )
        assert spec["name"] in DATASETS
        if not unknown:
            problems += [f"config key 'data.{task}.args': {problem}" for problem in dataset_problems(spec)]
            problems += [f"config key 'data.{task}.val_size': {problem}" for problem in split_problems(spec)]
    for stage in stages:
        batch = {**config["train"], **config[stage].get("train", {})}["batch_size"]
        for task in [f"sources.{n}" for n in sources] if stage == "pretrain" else ["target"]:
            size = train_examples(tasks[task])
            if size is not None and batch > size:
                problems.append(
                    f"config key '{stage}.train.batch_size' (or 'train.batch_size') = {batch} exceeds the "
                    f"{size} training examples of data.{task}; allowed: 1 to {size}"
                )
    images = sorted(n for n in DATASETS if DATASETS[n].images)
    for stage in stages:
        augment = {**config["train"], **config[stage].get("train", {})}.get("augment", [])
        for task in [f"sources.{n}" for n in sources] if stage == "pretrain" else ["target"]:
            name = tasks[task]["name"]
            if augment and not DATASETS[name].images:
                problems.append(
                    f"config key '{stage}.train.augment' (or 'train.augment') = {augment} needs an image "
                    f"dataset, but data.{task} is {name!r}; image datasets: {', '.join(images)}"
                )
    problems += _size_problems(config)
    # the schema holds: the runs a teacher or an embedding may name can be listed
    pretrained, finetuned = TRAINING_STAGES["pretrain"].runs(config), TRAINING_STAGES["finetune"].runs(config)
    ft = config.get("finetune", {"methods": [], "seeds": []})
    if any(m != "scratch" for m in ft["methods"]):
        have = config["pretrain"]["seeds"] if "pretrain" in stages else []
        missing = sorted(set(ft["seeds"]) - set(have))
        if missing:
            problems.append(
                f"config key 'finetune.seeds' has {missing}, which 'pretrain.seeds' lacks: each "
                f"fine-tuning run starts from the pretrained model of its seed; allowed: {have}"
            )
    for key, needs in (("wiseft", "linear_probe"), ("ensemble", "full")):
        if key in ft and needs not in ft["methods"]:
            problems.append(f"config key 'finetune.{key}' needs '{needs}' in 'finetune.methods'; have: {ft['methods']}")
    connectivity = config.get("analyze", {}).get("connectivity", {})
    if connectivity.get("align"):
        from workflow.analysis.plan import ALIGNABLE_MODELS

        if config["model"]["name"] not in ALIGNABLE_MODELS:
            problems.append(
                f"config key 'analyze.connectivity.align' needs a model whose units can be aligned, not "
                f"{config['model']['name']!r}; allowed models: {', '.join(ALIGNABLE_MODELS)}")
    if (manifold := config.get("analyze", {}).get("manifold")) is not None:
        if "zoo" not in config:
            problems.append("config key 'analyze.manifold' needs a 'zoo' section: it analyses the zoo's models")
        else:
            for key in ("widths", "sizes", "lrs", "seeds"):
                extra = sorted(set(manifold[key] or []) - set(config["zoo"][key]))
                if extra:
                    problems.append(f"config key 'analyze.manifold.{key}' has {extra}, which 'zoo.{key}' lacks; "
                                    f"allowed: {config['zoo'][key]}")
        from workflow.datasets import input_size

        target = config["data"]["target"]
        n = input_size(target)
        if n is not None and (beyond := sorted(d for d in manifold["dims"] if d > n)):
            problems.append(f"config key 'analyze.manifold.dims' has {beyond}, more than the {n} numbers of an input "
                            f"of {target['name']!r}: a subspace lies within the input space; allowed: 1 to {n}")
    if "zoo" in config and config["zoo"]["phases"]["path"] == "aligned" and not connectivity.get("align"):
        problems.append("config key 'zoo.phases.path' = 'aligned' needs 'analyze.connectivity.align: true'; "
                        "allowed without it: linear")
    pd = config.get("prune_data")
    if pd is not None and set(pd["scores"]) - {"random", "rs2"}:
        beyond = sorted({(o, f) for o in pd["offsets"] for f in pd["fractions"] if o + f > 1 + 1e-12})
        if beyond:
            problems.append(
                f"config keys 'prune_data.offsets' and 'prune_data.fractions': an offset and a fraction must sum "
                f"to at most 1 (the kept window lies within the scores); these do not: {beyond}")
    if pd is not None and "prototypes" in pd["scores"]:
        if pd["prototypes"].get("embedding") not in pretrained + finetuned:
            problems.append(
                f"config key 'prune_data.prototypes.embedding' = {pd['prototypes'].get('embedding')!r} is not a "
                f"run of this study; allowed values: {', '.join(pretrained + finetuned) or '(none: add a pretrain stage)'}"
            )
    if "distill" in stages:
        if pd is None:
            problems.append("config section 'distill' needs a 'prune_data' section: students train on its subsets")
        if "trained" in config["distill"]["teachers"] and config["distill"].get("teacher") not in finetuned:
            problems.append(
                f"config key 'distill.teacher' = {config['distill'].get('teacher')!r} is not a run of this study; "
                f"allowed values: {', '.join(finetuned) or '(none: add a finetune stage)'}"
            )
    if problems:
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(problems))


def _size_problems(config: Mapping[str, Any]) -> list[str]:
    """Sizes the config sets against the sizes of the data it makes, where the config
    determines them (a torchvision dataset's sizes are known only from its files)."""
    from workflow.batching import steps_per_epoch
    from workflow.datasets import test_examples, train_examples

    target = config["data"]["target"]
    n_train, n_test = train_examples(target), test_examples(target)
    problems = []

    def at_most(key: str, value: int, limit: int | None, what: str) -> None:
        if limit is not None and value > limit:
            problems.append(f"config key '{key}' = {value} exceeds {what}; allowed: at most {limit}")

    analyze = config.get("analyze", {})
    probe = analyze.get("probe_size", 0)
    at_most("analyze.probe_size", probe, n_test, f"the {n_test} test examples of data.target")
    relative = analyze.get("relative", {})
    at_most("analyze.relative.anchors", relative.get("anchors", 0), n_train,
            f"the {n_train} training examples of data.target (the anchors are drawn from them)")
    similarity = analyze.get("similarity", {})
    cca_dims = similarity.get("cca_dims", "refuse")
    if cca_dims != "refuse" and {"svcca", "pwcca"} & set(similarity.get("measures", [])):
        at_most("analyze.similarity.cca_dims", cca_dims, probe - 2,
                f"what analyze.probe_size = {probe} examples allow (CCA needs more examples than directions + 1)")
    prototypes = config.get("prune_data", {}).get("prototypes")
    if prototypes is not None and "prototypes" in config["prune_data"]["scores"]:
        at_most("prune_data.prototypes.k", prototypes["k"], n_train, f"the {n_train} training examples of data.target")
    if (zoo := config.get("zoo")) is not None:
        at_most("zoo.sizes", max(zoo["sizes"]), n_train, f"the {n_train} training examples of data.target")
    pn = config.get("prune_network")
    if pn is not None and n_train is not None:
        train = {**config["train"], **pn.get("train", {})}
        steps = train["epochs"] * steps_per_epoch(n_train, train["batch_size"])
        at_most("prune_network.rewind_steps", max(pn["rewind_steps"]), steps,
                f"the {steps} optimiser steps of the dense run ({train['epochs']} epochs of "
                f"{steps_per_epoch(n_train, train['batch_size'])} steps)")
    return problems


def load_config(config: Mapping[str, Any], schema_path: str | Path = SCHEMA) -> dict[str, Any]:
    """Validate, fill defaults and cross-check a study configuration."""
    validate(config, schema_path)
    full = fill_defaults(config, schema_path)
    check_semantics(full)
    return full
