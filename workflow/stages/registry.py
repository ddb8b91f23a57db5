"""Every training stage's home, by the stage name that starts its run ids, in DAG order."""

from __future__ import annotations

from workflow.registry import Registry
from workflow.stages import TrainingStage
from workflow.stages.data_pruning import PruneData
from workflow.stages.distill import Distill
from workflow.stages.finetune import EnsembleMember, Finetune
from workflow.stages.network_pruning import NetworkPruning
from workflow.stages.pretrain import Pretrain
from workflow.stages.random_teacher import RandomTeacher
from workflow.stages.zoo import Zoo

TRAINING_STAGES: Registry[TrainingStage] = Registry("training stage")
for _stage in (Pretrain(), Finetune(), PruneData(), Distill(), NetworkPruning(), EnsembleMember(), RandomTeacher(), Zoo()):
    TRAINING_STAGES.register(_stage.name)(_stage)
