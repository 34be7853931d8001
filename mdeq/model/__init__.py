"""The MDEQ architecture: spec, building blocks, the equilibrium layer f and the full model."""

from mdeq.model.layer import MDEQLayer
from mdeq.model.net import MDEQModel
from mdeq.model.spec import OVERRIDE_KEYS, ModelSpec
from mdeq.model.state import StateLayout

__all__ = ["MDEQLayer", "MDEQModel", "ModelSpec", "OVERRIDE_KEYS", "StateLayout"]
