"""Torch-only benchmarks behind `mdeq bench memory|step` (and the GPU report script).

Modules import torch inside their functions so building the CLI parser stays fast.
"""
