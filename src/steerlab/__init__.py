"""steerlab: find trait (persona) vectors in language models and measure how well they steer.

The pipeline, one module per stage:
    data -> generation -> (judges: vetting) -> capture -> methods -> vectors -> steering -> evaluate
and `search/` drives steering configurations through Optuna or CMA-ES, logged by `tracking`.
"""

__version__ = "0.1.0"

# Layer convention stored in every vector file: layer L is the output of decoder block L (0-based),
# i.e. Hugging Face `hidden_states[L + 1]`.
LAYER_CONVENTION = "0-based decoder block output (HF hidden_states[L+1])"


def prog(module: str) -> str:
    """A command's name as the user typed it: `steerlab-export` (its console script, as
    `[project.scripts]` names it) or `python -m steerlab.export`, for argparse's usage line."""
    import os
    import sys
    from importlib.metadata import entry_points

    typed = os.path.basename(sys.argv[0])
    for ep in entry_points(group="console_scripts", name=typed):
        target = ep.value.split(":")[0]  # steerlab.report.cli for steerlab.report
        if target == module or target.startswith(f"{module}."):
            return typed
    return f"python -m {module}"
