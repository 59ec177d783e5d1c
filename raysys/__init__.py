"""raysys: difficulty-controlled synthetic training data and diffusion curricula, on Ray."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # diffusers' from_pretrained finds a pipeline's custom modules as attributes of their
    # top-level package (library "raysys", class "DifficultyEncoder"); imported lazily so that
    # `import raysys` stays cheap.
    if name == "DifficultyEncoder":
        from raysys.generation.difficulty_encoder import DifficultyEncoder

        return DifficultyEncoder
    if name == "DifficultyDiffusionPipeline":
        from raysys.generation.pipeline import DifficultyDiffusionPipeline

        return DifficultyDiffusionPipeline
    raise AttributeError(f"module 'raysys' has no attribute {name!r}")
