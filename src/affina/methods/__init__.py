"""Adaptation methods, one module each, behind one registry."""

import logging

# bitsandbytes (imported by peft and transformers when installed) warns on import that an optional
# CPU kernel cannot be fetched from the hub; affina runs offline and its own 4-bit path works
# without it, so the warning would only be noise on every command.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)

from .base import (CLASSIFY, GENERATE, Method, Sharing, Task, TrainableReport,  # noqa: E402
                   build_method_config, describe_fields, get_method, method_config_dict,
                   method_field_names, method_names, register, trainable_report)
from .footprint import trainable_footprint  # noqa: E402

__all__ = ["CLASSIFY", "GENERATE", "Method", "Sharing", "Task", "TrainableReport",
           "build_method_config", "describe_fields", "get_method", "method_config_dict",
           "method_field_names", "method_names", "register", "trainable_footprint", "trainable_report"]
