"""affina: fine-tune, evaluate, serve and monitor language models on your own data."""

__version__ = "0.1.0"
__all__ = ["__version__"]
