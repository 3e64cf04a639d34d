"""The package version (also in pyproject.toml and CITATION.cff), apart from `fairbench/__init__.py`,
whose lazy API imports the runner: modules that record the version import it from here."""

__version__ = "0.1.0"
