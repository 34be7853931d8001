"""Tools for developers: a throwaway local Slurm cluster (``python -m launch.dev.slurm_cluster``)."""
