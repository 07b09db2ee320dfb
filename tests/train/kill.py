"""Run a training job in this process and SIGKILL it right after a checkpoint is written.

Used as `python -m tests.train.kill CONFIG_YAML STEP`: a real crash, not an exception the
trainer could clean up after.
"""

import os
import signal
import sys

from transformers import TrainerCallback

from affina.config import load_config
from affina.train import train


class KillAfterCheckpoint(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    train(load_config(sys.argv[1]), callbacks=(KillAfterCheckpoint(int(sys.argv[2])),))
