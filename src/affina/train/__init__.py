"""The SFT recipe and its callbacks."""

from .recipe import TrainResult, train

__all__ = ["train", "TrainResult"]
