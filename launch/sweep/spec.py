"""A sweep file: a base recipe, fixed overrides, a grid over config keys and named variants.

```yaml
name: width-x-cap                 # names the parent MLflow run and the output folder
base: ../quickstart.yaml          # recipe every point starts from (relative to this file)
set: {train.max_steps: 20}        # overrides applied to every point
grid:                             # key -> values; the cartesian product is run
  model.channels: [[8, 16], [16, 32]]
  deq.f_max_iter: [4, 8]
variants:                         # optional named override sets, crossed with the grid
  - {name: implicit, set: {deq.grad_mode: implicit}}
output_dir: runs/sweeps/width-x-cap
```

Every point is resolved and validated with the project's typed config loader before anything runs,
so a bad key fails the whole sweep at once with the loader's message.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainer.config import Config, ConfigError
from trainer.config.loader import (
    _read_yaml,
    apply_override,
    build_dataclass,
    config_from_dict,
    read_with_extends,
)


@dataclass
class Variant:
    """A named set of overrides (for ablations where several keys change together)."""

    name: str = ""
    set: dict[str, Any] = field(default_factory=dict)


@dataclass
class SyntheticData:
    """Synthetic ImageNet-layout data the sweep writes once (under ``<output_dir>/data``) and trains on."""

    classes: int = 4
    train_per_class: int = 16
    val_per_class: int = 4
    size: int = 32  # square image side in pixels
    samples_per_shard: int = 16
    seed: int = 0


@dataclass
class SweepSpec:
    """What ``mdeq sweep`` runs. Paths are resolved relative to the sweep file."""

    name: str = ""  # parent run name and default output folder name
    description: str = ""  # one line for the report
    base: str = ""  # recipe every point starts from
    set: dict[str, Any] = field(default_factory=dict)  # overrides applied to every point
    grid: dict[str, list[Any]] = field(default_factory=dict)  # key -> values (cartesian product)
    variants: list[Variant] = field(default_factory=list)  # named override sets crossed with the grid
    output_dir: str = ""  # default runs/sweeps/<name> (relative to the working directory)
    nproc: int = 1  # processes per point (torchrun --nproc-per-node)
    kind: str = "train"  # train: `mdeq train` per point; convergence: per-branch residual traces
    timeout_minutes: float = 60.0  # a point running longer is stopped and marked failed
    synthetic: SyntheticData | None = None  # train on synthetic data written by the sweep
    plan: bool = True  # add the memory planner's estimate (`mdeq plan`) to every point
    convergence_threshold: float = 1e-2  # kind=convergence: report iterations to this residual


@dataclass(frozen=True)
class SweepPoint:
    """One resolved grid point."""

    index: int
    label: str  # "model.num_branches=1 deq.f_max_iter=4" (variant name first)
    overrides: dict[str, Any]  # the point's own keys (grid + variant), not the fixed `set`
    config: Config

    @property
    def point_id(self) -> str:
        """Stable id of the point's overrides: the resume key, also stored as an MLflow tag."""
        blob = json.dumps(self.overrides, sort_keys=True, default=str)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


def _assignment(key: str, value: Any) -> str:
    # JSON is YAML, so `apply_override` parses lists/numbers/bools back; plain strings go as written.
    return f"{key}={value if isinstance(value, str) else json.dumps(value)}"


def load_sweep(path: str | Path) -> tuple[SweepSpec, Path]:
    """The validated sweep spec of ``path`` and the folder relative paths are resolved from."""
    path = Path(path)
    data = dict(_read_yaml(path))
    # nested sections the generic loader does not build (an optional dataclass, a list of them)
    synthetic = data.pop("synthetic", None)
    variants = data.pop("variants", None) or []
    if not isinstance(variants, list):
        raise ConfigError(f"{path}: sweep.variants must be a list of {{name:, set:}} mappings")
    spec = build_dataclass(SweepSpec, data, prefix="sweep.")
    if synthetic is not None:
        spec.synthetic = build_dataclass(SyntheticData, synthetic, prefix="sweep.synthetic.")
    spec.variants = [build_dataclass(Variant, v, prefix=f"sweep.variants[{i}].") for i, v in enumerate(variants)]
    if not spec.name:
        raise ConfigError(f"{path}: sweep.name is required (it names the parent run and the output folder)")
    if not spec.base:
        raise ConfigError(f"{path}: sweep.base is required (the recipe every point starts from)")
    if spec.kind not in ("train", "convergence"):
        raise ConfigError(f"{path}: sweep.kind {spec.kind!r} is unknown; use 'train' or 'convergence'")
    for key, values in spec.grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{path}: sweep.grid.{key} must be a non-empty list of values, got {values!r}")
    names = [v.name for v in spec.variants]
    if any(not n for n in names) or len(set(names)) != len(names):
        raise ConfigError(f"{path}: every sweep variant needs a unique name, got {names}")
    if spec.nproc < 1:
        raise ConfigError(f"{path}: sweep.nproc must be >= 1, got {spec.nproc}")
    return spec, path.resolve().parent


def expand_points(spec: SweepSpec, root: Path, extra_overrides: tuple[str, ...] = (),
                  base_overrides: tuple[str, ...] = ()) -> list[SweepPoint]:
    """Every point of the sweep, resolved and validated (raises ConfigError on the first bad one).

    ``extra_overrides`` (``--set`` on the sweep command line) apply to every point, after the
    point's own keys, e.g. to shrink a documented sweep for CI.
    """
    base = read_with_extends(root / spec.base)
    for assignment in base_overrides:  # e.g. the synthetic data's shard paths
        base = apply_override(base, assignment)
    for key, value in spec.set.items():
        base = apply_override(base, _assignment(key, value))
    keys = list(spec.grid)
    variants = spec.variants or [Variant(name="", set={})]
    points: list[SweepPoint] = []
    for variant in variants:
        for values in itertools.product(*(spec.grid[k] for k in keys)):
            own = {**variant.set, **dict(zip(keys, values))}
            data = base
            for key, value in own.items():
                data = apply_override(data, _assignment(key, value))
            for assignment in extra_overrides:
                data = apply_override(data, assignment)
            parts = ([variant.name] if variant.name else []) + [f"{k}={_short(v)}" for k, v in zip(keys, values)]
            label = " ".join(parts) or "base"
            try:
                config = config_from_dict(data)
            except ConfigError as err:
                raise ConfigError(f"sweep point [{label}]: {err}") from None
            overrides = {"variant": variant.name, **own} if variant.name else own
            points.append(SweepPoint(index=len(points), label=label, overrides=overrides, config=config))
    return points


def _short(value: Any) -> str:
    if isinstance(value, list):
        return "[" + ",".join(_short(v) for v in value) + "]"
    return str(value)
