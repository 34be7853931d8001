"""MDEQ: multiscale deep equilibrium models, solvers and implicit differentiation (torch only).

Exports are resolved lazily (PEP 562) so that importing a light submodule (e.g. the benchmark
argument parsers that `mdeq --help` builds) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# exported name -> module defining it
_EXPORTS = {
    "DEQOptions": "mdeq.deq.options",
    "DEQStats": "mdeq.deq.equilibrium",
    "solve_equilibrium": "mdeq.deq.equilibrium",
    "MDEQModel": "mdeq.model",
    "ModelSpec": "mdeq.model",
    "count_parameters": "mdeq.registry",
    "create_model": "mdeq.registry",
    "get_model_spec": "mdeq.registry",
    "list_models": "mdeq.registry",
    "TransferResult": "mdeq.transfer",
    "load_backbone": "mdeq.transfer",
    "from_released_state_dict": "mdeq.model.released",
}
__all__ = list(_EXPORTS)

if TYPE_CHECKING:  # for type checkers and IDEs; at run time the names load on first use
    from mdeq.deq.equilibrium import DEQStats, solve_equilibrium  # noqa: F401
    from mdeq.deq.options import DEQOptions  # noqa: F401
    from mdeq.model import MDEQModel, ModelSpec  # noqa: F401
    from mdeq.model.released import from_released_state_dict  # noqa: F401
    from mdeq.registry import count_parameters, create_model, get_model_spec, list_models  # noqa: F401
    from mdeq.transfer import TransferResult, load_backbone  # noqa: F401


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'mdeq' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # cache: later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
