"""Package discovery pyproject.toml cannot express: every package under edgekit/ found automatically, plus the two
folders mapped into it (models/ -> edgekit.models, targets/ -> edgekit.profiles, see [tool.setuptools.package-dir])."""

from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["edgekit", "edgekit.*"]), "edgekit.models", "edgekit.profiles"])
