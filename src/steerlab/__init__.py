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
    """A command's name as the user typed it: `steerlab-export` (its console script) or
    `python -m steerlab.export`, for argparse's usage line."""
    import os
    import sys

    script = "steerlab-" + module.rsplit(".", 1)[-1].replace("_", "-")
    if module == "steerlab.imports":
        script = "steerlab-import"
    return script if os.path.basename(sys.argv[0]) == script else f"python -m {module}"
