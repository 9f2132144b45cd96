"""Experiments: the paper's ablations as runnable grids (``gemdepth experiment CONFIG``).

An experiment file (``experiments/table4.yaml``) names a base recipe, variants as config
overrides, seeds, a budget, corpora and held-out evaluation sets; :mod:`.runner` trains every
variant × seed through ``gemdepth fit`` and evaluates each the same way, :mod:`.report` writes
``results.json``, ``results.md`` and the plots.
"""

from gemdepth.experiment.config import (
    Cell,
    Experiment,
    ExperimentConfigError,
    load_experiment,
)

__all__ = ["Cell", "Experiment", "ExperimentConfigError", "load_experiment"]
