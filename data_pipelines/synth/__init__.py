"""Synthetic data written in the raw on-disk layouts of ImageNet and Cityscapes (``mdeq synth``)."""
