"""raysys: difficulty-controlled synthetic training data and diffusion curricula, on Ray."""

__version__ = "0.1.0"
