"""Sweeps: planning the runs of a Hydra multirun, running them and reading how each ended."""
