"""Workloads: model and training configs, presets, routing models and the OpGraph builder."""

from moesim.workload.builder import build_graph
from moesim.workload.config import ModelConfig, TrainingConfig, Workload
from moesim.workload.presets import list_model_presets, load_workload

__all__ = ["ModelConfig", "TrainingConfig", "Workload", "build_graph", "list_model_presets", "load_workload"]
