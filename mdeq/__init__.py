"""MDEQ: multiscale deep equilibrium models, solvers and implicit differentiation (torch only)."""

from mdeq.deq.equilibrium import DEQStats, solve_equilibrium
from mdeq.deq.options import DEQOptions
from mdeq.model import MDEQModel, ModelSpec
from mdeq.registry import count_parameters, create_model, get_model_spec, list_models
from mdeq.transfer import TransferResult, load_backbone

__all__ = ["DEQOptions", "DEQStats", "solve_equilibrium",
           "MDEQModel", "ModelSpec", "count_parameters", "create_model", "get_model_spec", "list_models",
           "TransferResult", "load_backbone"]
