"""{{ cookiecutter.description }}. Importing this package is cheap: torch loads when a component is built."""

__version__ = "0.1.0"
