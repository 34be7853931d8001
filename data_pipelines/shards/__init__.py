"""Shard writing (crash-safe, restartable) and shard listing/indexing."""
