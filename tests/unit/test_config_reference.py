"""docs/configuration.md is generated from the config's field docstrings and lists every field."""

from dataclasses import fields, is_dataclass
from pathlib import Path

from raysys.core.config import PlanConfig, RaysysConfig
from raysys.core.reference import all_field_paths, field_docs, reference, sections

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def _leaves(cls, prefix=""):
    out = []
    for f in fields(cls):
        default = f.default_factory() if callable(f.default_factory) else f.default
        if is_dataclass(default):
            out += _leaves(type(default), f"{prefix}{f.name}.")
        elif f.name == "plans" and cls.__name__ == "SynthesisConfig":
            out += [f"{prefix}plans", *_leaves(PlanConfig, f"{prefix}plans[].")]
        else:
            out.append(f"{prefix}{f.name}")
    return out


def test_the_reference_lists_every_field_with_its_meaning():
    paths = all_field_paths()
    assert sorted(paths) == sorted(_leaves(RaysysConfig))
    text = reference()
    for path in paths:
        assert f"| `{path}` |" in text, path
    for _, cls in sections():
        docs = field_docs(cls)
        for f in fields(cls):
            assert docs.get(f.name), f"{cls.__name__}.{f.name} has no docstring"
    assert "generator.guidance_scale" in paths  # inherited from SamplingConfig


def test_the_committed_reference_is_the_generated_one():
    assert DOC.read_text() == reference(), "regenerate: python -m raysys.core.reference > docs/configuration.md"
