"""The SFT recipe, its callbacks and the training profiles.

`train` and `TrainResult` load the recipe (and its tracking dependencies) on first use, so that
`affina.train.speed` can be imported where only torch, transformers and peft are installed.
"""

__all__ = ["train", "TrainResult"]


def __getattr__(name: str):
    if name in __all__:
        from . import recipe

        return getattr(recipe, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
