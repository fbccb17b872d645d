"""Training: the loop of one pack (`loop`), stacked optimizers (`optim`), and `Recorder` for
measuring inside a training loop of your own."""

from .loop import ATTEMPT, CHECKPOINT, LeaseLost, RunResult, run_id_of, stored_result, train_pack
from .recorder import Recorder

__all__ = ["ATTEMPT", "CHECKPOINT", "LeaseLost", "Recorder", "RunResult", "run_id_of", "stored_result", "train_pack"]
