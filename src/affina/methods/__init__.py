"""Adaptation methods, one module each, behind one registry."""

import logging

# bitsandbytes (imported by peft and transformers when installed) warns on import that an optional
# CPU kernel cannot be fetched from the hub; affina runs offline and its own 4-bit path works
# without it, so the warning would only be noise on every command.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from .base import (Method, TrainableReport, attach_data, build_method_config, data_collator,
                   describe_fields, get_method, load_options, merge_supported, method_names,
                   method_report, method_task, method_trains, metrics_function, prepare_method_data,
                   register, trainable_report)
from .footprint import trainable_footprint

__all__ = ["Method", "TrainableReport", "attach_data", "build_method_config", "data_collator",
           "describe_fields", "get_method", "load_options", "merge_supported", "method_names",
           "method_report", "method_task", "method_trains", "metrics_function",
           "prepare_method_data", "register", "trainable_footprint", "trainable_report"]
