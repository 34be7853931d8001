"""Typed, validated configuration: ``load_config(path, overrides)`` returns a ``Config``."""

from trainer.config.errors import ConfigError
from trainer.config.loader import config_from_dict, config_to_dict, dump_config, flatten_config, load_config
from trainer.config.schema import (
    CheckpointConfig,
    Config,
    DataConfig,
    DeepSpeedConfig,
    DEQConfig,
    DEQPrecisionConfig,
    ModelConfig,
    OptimConfig,
    TrackingConfig,
    TrainConfig,
)

__all__ = [
    "CheckpointConfig", "Config", "ConfigError", "DataConfig", "DeepSpeedConfig", "DEQConfig",
    "DEQPrecisionConfig", "ModelConfig", "OptimConfig", "TrackingConfig", "TrainConfig",
    "config_from_dict", "config_to_dict", "dump_config", "flatten_config", "load_config",
]
