"""The README's config reference is generated from the schemas and must match them."""

from pathlib import Path

from core.reference import readme_section, render


def test_readme_config_reference_matches_schemas():
    readme = Path(__file__).resolve().parents[1] / "README.md"
    assert readme_section(readme.read_text()) == render(), "run `python -m core.reference --write` after schema changes"
