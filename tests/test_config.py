"""Tests for configuration checking: clear errors, defaults, and a schema that
cannot drift from the code."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable

import pytest
import yaml

from workflow.config import SCHEMA, ConfigError, load_config

Config = dict[str, Any]


def _load_with(config: Config, change: Callable[[Config], None]) -> Config:
    config = copy.deepcopy(config)
    change(config)
    return load_config(config)


# --- the shipped studies ------------------------------------------------------------------


def test_the_default_config_loads(default_config: Config) -> None:
    config = load_config(default_config)
    assert config["model"] == {"name": "cnn1d", "channels": 32}
    assert config["finetune"]["methods"] == ["full", "linear_probe", "scratch"]


def test_the_tiny_study_loads_on_its_own(tiny_config: Config) -> None:
    config = load_config(tiny_config)
    assert config["model"] == {"name": "cnn1d", "channels": 4}
    assert config["finetune"]["seeds"] == [0]
    assert config["finetune"]["train"] == {"epochs": 2}  # nothing of the default's leaks in
    assert config["data"]["target"]["train_size"] == 100
    assert config["data"]["sources"]["synthetic"]["train_size"] is None  # the schema's default, for every source


def test_load_config_does_not_change_its_input(default_config: Config) -> None:
    before = copy.deepcopy(default_config)
    load_config(default_config)
    assert default_config == before


def test_loading_a_loaded_config_changes_nothing(tiny_config: Config) -> None:
    config = load_config(tiny_config)
    assert load_config(config) == config


# --- errors name the key and what it allows ------------------------------------------------

ERRORS = {
    "unknown top-level key": (
        lambda c: c.update(epochz=3),
        ["['epochz']", "allowed keys: analyze, checkpoint_every, data, device, distill"],
    ),
    "unknown nested key": (
        lambda c: c["prune_network"].update(scoep="layer"),
        ["['scoep']", "under 'prune_network'", "allowed keys: fraction, levels, methods, rewind_steps, scope"],
    ),
    "unknown key in a stage's train": (
        lambda c: c["finetune"]["train"].update(lrate=0.1),
        ["['lrate']", "under 'finetune.train'", "batch_size, compile, epochs, lr, momentum, optimizer, precision"],
    ),
    "unknown dataset generator setting": (
        lambda c: c["data"]["target"]["args"].update(num_sample=10),
        ["['num_sample']", "'data.target.args'", "num_samples"],
    ),
    "negative checkpoint interval": (
        lambda c: c.update(checkpoint_every=-1),
        ["'checkpoint_every'", "-1"],
    ),
    "wrong type": (
        lambda c: c["train"].update(epochs="ten"),
        ["'train.epochs'", "'ten' is not of type 'integer'"],
    ),
    "unknown finetune method": (
        lambda c: c["finetune"].update(methods=["full", "dora"]),
        ["'finetune.methods[1]' = 'dora'", "allowed values: bn_head, bn_only, eva, full, linear_probe, lora, scratch, stats"],
    ),
    "unknown data-pruning score": (
        lambda c: c["prune_data"].update(scores=["memorisation"]),
        ["'prune_data.scores[0]' = 'memorisation'", "allowed values: el2n, grand, forgetting, prototypes, random, rs2"],
    ),
    "prototype embedding that is not a run": (
        lambda c: c["prune_data"].update(scores=["prototypes"], prototypes={"embedding": "pretrain/s0"}),
        ["'prune_data.prototypes.embedding' = 'pretrain/s0'",
         "allowed values: pretrain/mnist1d/s0, pretrain/mnist1d/s1, pretrain/synthetic/s0"],
    ),
    "prototype scores without an embedding": (
        lambda c: c["prune_data"].update(scores=["prototypes"]),
        ["'prune_data.prototypes.embedding' = None is not a run of this study", "pretrain/mnist1d/s0"],
    ),
    "unknown model": (
        lambda c: c["model"].update(name="resnet18"),
        ["'model.name' = 'resnet18'", "allowed values: cnn1d, mlp"],
    ),
    "unknown optimizer": (
        lambda c: c["train"].update(optimizer="rmsprop"),
        ["'train.optimizer' = 'rmsprop'", "allowed values: sgd, adam, adamw"],
    ),
    "unknown optimizer in a stage": (
        lambda c: c["distill"]["train"].update(optimizer="rmsprop"),
        ["'distill.train.optimizer' = 'rmsprop'", "allowed values: sgd, adam, adamw"],
    ),
    "unknown network-pruning method": (
        lambda c: c["prune_network"].update(methods=["imp", "snip"]),
        ["'prune_network.methods[1]' = 'snip'", "allowed values: erk, imp, oneshot, random, reinit, scratch"],
    ),
    "unknown pruning scope": (
        lambda c: c["prune_network"].update(scope="channel"),
        ["'prune_network.scope' = 'channel'", "allowed values: global, layer"],
    ),
    "missing section": (
        lambda c: c.pop("model"),
        ["'model' is a required property"],
    ),
    "distillation without data pruning": (
        lambda c: c.pop("prune_data"),
        ["section 'distill' needs a 'prune_data' section"],
    ),
    "trained teacher without fine-tuning": (
        lambda c: c.pop("finetune"),
        ["'distill.teacher' = 'finetune/scratch/s0' is not a run of this study", "add a finetune stage"],
    ),
    "WiSE-FT without a linear probe": (
        lambda c: c["finetune"].update(methods=["full"], wiseft={"alphas": [0, 1]}),
        ["'finetune.wiseft' needs 'linear_probe' in 'finetune.methods'"],
    ),
    "ensembles without full fine-tuning": (
        lambda c: c["finetune"].update(methods=["scratch"], ensemble={"members": 2}),
        ["'finetune.ensemble' needs 'full' in 'finetune.methods'"],
    ),
    "pretraining without a source task": (
        lambda c: c["data"].pop("sources"),
        ["'data.sources' is missing: the pretrain stage trains on each of its tasks"],
    ),
    "the old single source": (
        lambda c: c["data"].update(source=c["data"].pop("sources")["mnist1d"]),
        ["unknown config key(s) ['source'] under 'data'; allowed keys: sources, target"],
    ),
    "a source named none": (
        lambda c: c["data"]["sources"].update(none={"name": "synthetic"}),
        ["'data.sources.none' is not allowed: 'none' stands for no pretraining (scratch)"],
    ),
    "a source name that cannot be a folder": (
        lambda c: c["data"]["sources"].update({"My Task": {"name": "synthetic"}}),
        ["'data.sources'", "'My Task' does not match"],
    ),
    "unknown setting of a source dataset": (
        lambda c: c["data"]["sources"]["synthetic"]["args"].update(smoothnes=2),
        ["unknown config key(s) ['smoothnes'] under 'data.sources.synthetic.args'", "allowed keys for synthetic:"],
    ),
    "out of range": (
        lambda c: c["prune_network"].update(fraction=1.0),
        ["'prune_network.fraction'"],
    ),
    "teacher not a run of the study": (
        lambda c: c["distill"].update(teacher="finetune/mnist1d/full/s7"),
        ["'distill.teacher' = 'finetune/mnist1d/full/s7' is not a run of this study",
         "allowed values: finetune/mnist1d/full/s0"],
    ),
    "teacher of another stage": (
        lambda c: c["distill"].update(teacher="pretrain/mnist1d/s0"),
        ["'distill.teacher' = 'pretrain/mnist1d/s0'"],
    ),
    "unknown augmentation": (
        lambda c: c["train"].update(augment=["rotate"]),
        ["'train.augment[0]' = 'rotate'", "allowed values: crop, flip"],
    ),
    "unknown precision": (
        lambda c: c["finetune"]["train"].update(precision="fp16"),
        ["'finetune.train.precision' = 'fp16'", "allowed values: fp32, bf16"],
    ),
    "image augmentation on MNIST-1D": (
        lambda c: c["distill"]["train"].update(augment=["flip"]),
        ["'distill.train.augment'", "data.target is 'mnist1d'", "image datasets: cifar10, cifar100"],
    ),
    "finetune seed without a pretrained model": (
        lambda c: c["finetune"].update(seeds=[0, 5]),
        ["'finetune.seeds' has [5]", "'pretrain.seeds'", "allowed: [0, 1]"],
    ),
    "unknown similarity edge": (
        lambda c: c["analyze"]["similarity"].update(edges=["finetune", "teacher"]),
        ["'analyze.similarity.edges[1]' = 'teacher' is not allowed",
         "allowed values: finetune, prune, distill, seeds, within"],
    ),
    "empty results folder": (
        lambda c: c.update(results=""),
        ["config key 'results' = '' is not allowed", "not empty"],
    ),
    "epochs written as a float": (
        lambda c: c["pretrain"]["train"].update(epochs=1e9),
        ["config key 'pretrain.train.epochs': 1000000000.0 is not of type 'integer'"],
    ),
    "no epochs": (
        lambda c: c["train"].update(epochs=0),
        ["config key 'train.epochs': 0 is less than the minimum of 1"],
    ),
    "seed written as a float": (
        lambda c: c["finetune"].update(seeds=[0, 1.0]),
        ["'finetune.seeds[1]': 1.0 is not of type 'integer'"],
    ),
    "batch larger than the training set": (
        lambda c: c["finetune"]["train"].update(batch_size=501),
        ["config key 'finetune.train.batch_size' (or 'train.batch_size') = 501 exceeds the 500 training "
         "examples of data.target; allowed: 1 to 500"],
    ),
    "batch larger than a source's training set": (
        lambda c: c["data"]["sources"]["synthetic"]["args"].update(num_train=64),
        ["'pretrain.train.batch_size' (or 'train.batch_size') = 100 exceeds the 64 training examples of "
         "data.sources.synthetic"],
    ),
    "probe set larger than the test set": (
        lambda c: c["analyze"].update(probe_size=5000),
        ["config key 'analyze.probe_size' = 5000 exceeds the 1500 test examples of data.target; allowed: at most 1500"],
    ),
    "default probe set of a small test set": (
        lambda c: c["data"]["target"]["args"].update(num_samples=600, train_split=0.8),
        ["config key 'analyze.probe_size' = 500 exceeds the 120 test examples of data.target"],
    ),
    "more anchors than training examples": (
        lambda c: c["analyze"].setdefault("relative", {}).update(anchors=5000),
        ["config key 'analyze.relative.anchors' = 5000 exceeds the 500 training examples of data.target",
         "allowed: at most 500"],
    ),
    "rewind beyond the dense run's steps": (
        lambda c: c["prune_network"].update(rewind_steps=[0, 1000000]),
        ["config key 'prune_network.rewind_steps' = 1000000 exceeds the 300 optimiser steps of the dense run "
         "(30 epochs of 10 steps); allowed: at most 300"],
    ),
    "more CCA directions than the probe set allows": (
        lambda c: c["analyze"].update(probe_size=50, similarity={"measures": ["svcca"], "cca_dims": 49}),
        ["config key 'analyze.similarity.cca_dims' = 49 exceeds", "allowed: at most 48"],
    ),
    "more prototypes than training examples": (
        lambda c: c["prune_data"].update(scores=["prototypes"], prototypes={"k": 501, "embedding": "pretrain/mnist1d/s0"}),
        ["config key 'prune_data.prototypes.k' = 501 exceeds the 500 training examples of data.target"],
    ),
    "offset and fraction beyond the scores": (
        lambda c: c["prune_data"].update(offsets=[0, 0.5]),
        ["'prune_data.offsets' and 'prune_data.fractions'", "(0.5, 0.75)"],
    ),
    "offset of one": (
        lambda c: c["prune_data"].update(offsets=[1.0]),
        ["config key 'prune_data.offsets[0]': 1.0 is greater than or equal to the maximum of 1"],
    ),
    "image folder without its root": (
        lambda c: c["data"].update(target={"name": "image_folder", "args": {"size": [32]}}),
        ["config key 'data.target.args': image_folder needs args.root",
         "config key 'data.target.args': image_folder setting 'size' must be [height, width]"],
    ),
    "similarity edge named twice": (
        lambda c: c["analyze"]["similarity"].update(edges=["within", "within"]),
        ["'analyze.similarity.edges'", "non-unique elements"],
    ),
}


@pytest.mark.parametrize(("change", "fragments"), ERRORS.values(), ids=ERRORS.keys())
def test_bad_config_raises_config_error_naming_the_key_and_what_is_allowed(
    default_config: Config, change: Callable[[Config], None], fragments: list[str]
) -> None:
    with pytest.raises(ConfigError) as error:
        _load_with(default_config, change)
    for fragment in fragments:
        assert fragment in str(error.value)


def test_every_violation_is_reported_at_once(default_config: Config) -> None:
    def two_errors(c: Config) -> None:
        c["model"]["name"] = "resnet18"
        c["train"]["optimizer"] = "rmsprop"

    with pytest.raises(ConfigError, match=r"(?s)model\.name.*train\.optimizer"):
        _load_with(default_config, two_errors)


def test_a_study_leaves_out_the_stages_it_does_not_ask_about(default_config: Config) -> None:
    from workflow.study import Study

    def only_network_pruning(c: Config) -> None:
        for stage in ("pretrain", "finetune", "prune_data", "distill", "analyze"):
            del c[stage]
        del c["data"]["sources"]

    config = _load_with(default_config, only_network_pruning)
    runs = Study(config, checked=True).training_runs()
    assert runs and all(r.startswith("prune_network/") for r in runs)
    # the analyze section's defaults: similarity along every edge the study has
    assert set(Study(config, checked=True).summaries()) == {"network_pruning", "similarity_prune"}


def test_untrained_teachers_need_no_trained_one(default_config: Config) -> None:
    def untrained_only(c: Config) -> None:
        c["distill"].update(teachers=["untrained"])
        del c["distill"]["teacher"], c["finetune"]

    _load_with(default_config, untrained_only)


def test_finetune_seeds_need_no_pretraining_when_every_method_is_scratch(default_config: Config) -> None:
    def scratch_only(c: Config) -> None:
        c["finetune"].update(methods=["scratch"], seeds=[7])
        c["distill"]["teacher"] = "finetune/scratch/s7"

    assert _load_with(default_config, scratch_only)["finetune"]["seeds"] == [7]


def test_a_model_setting_the_named_model_does_not_take_is_refused(default_config: Config) -> None:
    # Otherwise every training job fails later with "unexpected keyword argument 'channels'".
    with pytest.raises(ConfigError, match=r"'model\.channels'.*mlp.*allowed keys: .*width"):
        _load_with(default_config, lambda c: c.update(model={"name": "mlp", "channels": 8}))


@pytest.mark.parametrize("model", [{"name": "mlp", "width": 8, "depth": 1}, {"name": "cnn1d", "channels": 4}])
def test_each_model_takes_its_own_settings(default_config: Config, model: Config) -> None:
    assert _load_with(default_config, lambda c: c.update(model=model))["model"] == model


# --- defaults ---------------------------------------------------------------------------


def test_defaults_are_filled_in(default_config: Config) -> None:
    def strip(c: Config) -> None:
        for key in ("results", "device", "threads"):
            del c[key]
        del c["prune_network"]["scope"], c["prune_network"]["fraction"], c["prune_network"]["rewind_steps"]
        del c["prune_data"]["keep"], c["prune_data"]["class_balanced"], c["prune_data"]["el2n"]
        del c["distill"]["temperature"], c["distill"]["alpha"], c["pretrain"]["train"]
        del c["data"]["sources"]["mnist1d"]["args"], c["data"]["target"]["train_size"]

    config = _load_with(default_config, strip)
    assert (config["results"], config["device"], config["threads"]) == ("results", "auto", 1)
    assert config["prune_network"]["scope"] == "global"
    assert config["prune_network"]["fraction"] == 0.2
    assert config["prune_network"]["rewind_steps"] == [0]
    assert config["prune_data"]["keep"] == ["hard"]
    assert config["prune_data"]["class_balanced"] is False
    assert config["prune_data"]["el2n"] == {"inits": 2, "epoch": 3}
    assert (config["distill"]["temperature"], config["distill"]["alpha"]) == ([4.0], [0.5])
    assert config["distill"]["teachers"] == ["trained"]
    assert config["pretrain"]["train"] == {}
    assert config["data"]["sources"]["mnist1d"]["args"] == {}
    assert config["data"]["sources"]["mnist1d"]["train_size"] is None
    assert config["data"]["target"]["train_size"] is None


def test_defaults_fill_a_partly_given_section(default_config: Config) -> None:
    config = _load_with(default_config, lambda c: c["prune_data"].update(el2n={"inits": 5}))
    assert config["prune_data"]["el2n"] == {"inits": 5, "epoch": 3}


@pytest.mark.parametrize("similarity", [None, {"measures": ["rbf_cka"]}])
def test_similarity_is_compared_along_every_edge_by_default(default_config: Config, similarity: Any) -> None:
    from workflow.study import SIMILARITY_EDGES

    def change(c: Config) -> None:
        if similarity is None:
            del c["analyze"]["similarity"]
        else:
            c["analyze"]["similarity"] = similarity

    config = _load_with(default_config, change)
    assert config["analyze"]["similarity"]["edges"] == list(SIMILARITY_EDGES)
    assert _load_with(default_config, lambda c: c["analyze"]["similarity"].update(edges=[])
                      )["analyze"]["similarity"]["edges"] == []


# --- the schema cannot drift from the code -------------------------------------------------


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return yaml.safe_load(Path(SCHEMA).read_text())


def _enum(schema: dict[str, Any], *path: str) -> list[str]:
    node: Any = schema
    for part in path:
        node = node[part]
    return sorted(node["enum"])


def test_schema_model_names_are_the_registered_models(schema) -> None:
    from workflow.models import MODELS

    assert _enum(schema, "properties", "model", "properties", "name") == MODELS.names()


def test_schema_finetune_methods_are_the_registered_methods(schema) -> None:
    from workflow.finetune import FINETUNE

    assert _enum(schema, "properties", "finetune", "properties", "methods", "items") == FINETUNE.names()


def test_schema_dataset_names_are_the_registered_datasets(schema) -> None:
    from workflow.datasets import DATASETS

    assert _enum(schema, "$defs", "dataset", "properties", "name") == DATASETS.names()


def test_schema_optimizers_and_schedules_are_those_of_the_training_loop(schema) -> None:
    from workflow.train import OPTIMIZERS, SCHEDULES

    train = schema["$defs"]["train_overrides"]["properties"]
    assert _enum(train, "optimizer") == sorted(OPTIMIZERS)
    assert _enum(train, "schedule") == sorted(SCHEDULES)
    from workflow.engines import PRECISIONS

    assert _enum(train, "precision") == sorted(PRECISIONS)


def test_schema_augmentations_are_the_registered_ones(schema) -> None:
    from workflow.augment import AUGMENTATIONS

    train = schema["$defs"]["train_overrides"]["properties"]
    assert _enum(train, "augment", "items") == AUGMENTATIONS.names()


def test_schema_pruning_scopes_are_those_of_network_pruning(schema) -> None:
    from workflow.prune_network import PRUNING_SCOPES
    from workflow.stages.network_pruning import PRUNING_METHODS

    assert _enum(schema, "properties", "prune_network", "properties", "scope") == sorted(PRUNING_SCOPES)
    methods = _enum(schema, "properties", "prune_network", "properties", "methods", "items")
    assert methods == sorted(PRUNING_METHODS)


def test_schema_scores_and_keep_rules_are_those_of_data_pruning(schema) -> None:
    from workflow.prune_data import KEEP_RULES, SCORE_METHODS

    prune_data = schema["properties"]["prune_data"]["properties"]
    assert _enum(prune_data, "scores", "items") == sorted(SCORE_METHODS)
    assert _enum(prune_data, "keep", "items") == sorted(KEEP_RULES)


def test_schema_similarity_edges_are_those_the_study_plans(schema) -> None:
    from workflow.study import SIMILARITY_EDGES

    similarity = schema["properties"]["analyze"]["properties"]["similarity"]["properties"]
    assert _enum(similarity, "edges", "items") == sorted(SIMILARITY_EDGES)
    assert similarity["edges"]["default"] == list(SIMILARITY_EDGES)


def test_schema_model_settings_are_the_arguments_of_each_model(schema) -> None:
    import inspect

    from workflow.models import MODELS

    per_model = {
        rule["if"]["properties"]["name"]["const"]: set(rule["then"]["propertyNames"]["enum"])
        for rule in schema["properties"]["model"]["allOf"]
    }
    assert sorted(per_model) == MODELS.names()
    for name, allowed in per_model.items():
        arguments = set(inspect.signature(MODELS[name]).parameters) - {"in_length", "num_classes"}
        assert allowed == {"name"} | arguments, name
    assert set().union(*per_model.values()) == set(schema["properties"]["model"]["properties"])


def test_schema_training_keys_are_the_fields_of_train_config(schema) -> None:
    from dataclasses import fields

    from workflow.train import TrainConfig

    assert sorted(schema["$defs"]["train_overrides"]["properties"]) == sorted(f.name for f in fields(TrainConfig))


@pytest.mark.parametrize("study", sorted(p.stem for p in (Path(__file__).parent.parent / "config" / "studies").glob("*.yaml")))
def test_every_shipped_study_is_a_complete_valid_config(read_config, study: str) -> None:
    load_config(read_config(study))
