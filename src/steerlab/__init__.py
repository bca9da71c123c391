"""steerlab: find trait (persona) vectors in language models and measure how well they steer.

The pipeline, one module per stage:
    data -> generation -> (judges: vetting) -> capture -> methods -> vectors -> steering -> evaluate
and `search/` drives steering configurations through Optuna or CMA-ES, logged by `tracking`.
"""

__version__ = "0.1.0"

# Layer convention stored in every vector file: layer L is the output of decoder block L (0-based),
# i.e. Hugging Face `hidden_states[L + 1]`.
LAYER_CONVENTION = "0-based decoder block output (HF hidden_states[L+1])"
