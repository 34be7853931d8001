"""Shard writers, streaming loaders and synthetic data for ImageNet and Cityscapes."""
