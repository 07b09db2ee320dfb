"""Adaptation methods, one module each, behind one registry."""

from .base import (Method, TrainableReport, build_method_config, get_method, method_names,
                   trainable_report)

__all__ = ["Method", "TrainableReport", "build_method_config", "get_method", "method_names",
           "trainable_report"]
