"""DeepSpeed training loop, checkpoints, MLflow tracking and metrics."""
