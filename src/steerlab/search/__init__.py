"""Searching steering configurations under a coherence constraint.

`strategies` proposes batches of trials (Optuna samplers, the reference's adaptive coefficient
search, pycma over ensemble weights); `pareto` summarises a study. The Hydra sweeper plugin in
`hydra_plugins.steerlab_sweeper` runs each trial as a Hydra job.
"""
