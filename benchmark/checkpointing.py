"""Per-run training checkpoints: written atomically during training, checked and loaded safely on resume.

A checkpoint is Lightning's (model, optimizer, scheduler, loop progress) plus the module's own training state
(``MTOModule.on_save_checkpoint``) plus, from :class:`RunCheckpoint`, the run's fingerprint, the global RNG
states and how far into its epoch it was. Everything in it is a tensor or plain data, so it loads with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import signal
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint

KILL_ENV = "MTOBENCH_KILL_AT_BATCH"
"""Test hook: a run that did not resume SIGKILLs its own process after this many training batches."""
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")


def checkpoint_path(out_dir: Path | str, run_id: str) -> Path:
    """The checkpoint of a run, beside its record."""
    return Path(out_dir) / f"{run_id}.ckpt"


def fingerprint(payload: dict) -> str:
    """A short hash of everything that defines a run; a checkpoint resumes only the run that wrote it."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def rng_states() -> dict:
    """The global torch, NumPy and Python RNG states as tensors and plain data."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # noqa: NPY002 - the legacy global RNG
    return {"torch": torch.get_rng_state(), "numpy": [kind, keys.tolist(), pos, has_gauss, cached],
            "python": random.getstate()}


def set_rng_states(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def read_checkpoint(path: Path) -> dict:
    """Load a checkpoint with ``weights_only=True``; anything unreadable raises ``ValueError`` naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, unpickling refusal, I/O error: all one message
        raise ValueError(f"checkpoint {path} cannot be loaded safely (weights_only=True): {exc}; delete it to "
                         "restart the run from scratch") from exc


def check_resumable(path: Path, expected: str) -> dict:
    """The :class:`RunCheckpoint` state saved in ``path``, if it was written by the run with fingerprint
    ``expected``; otherwise ``ValueError`` naming the file."""
    state = read_checkpoint(path).get("callbacks", {}).get(RunCheckpoint.__qualname__)
    if not isinstance(state, dict) or "fingerprint" not in state:
        raise ValueError(f"checkpoint {path} was not written by mtobench's RunCheckpoint; delete it or use --force")
    if state["fingerprint"] != expected:
        raise ValueError(f"checkpoint {path} belongs to another configuration of this run (fingerprint "
                         f"{state['fingerprint']}, expected {expected}); delete it or rerun with --force")
    return state


class RunCheckpoint(Checkpoint):
    """Saves ``path`` at the end of every ``every_n_epochs``-th training epoch and of the last one (after the
    module's own epoch-end hook) and, with ``every_n_batches > 0``, every that many training batches; each save is
    a temp file + ``os.replace``.

    Resuming mid-epoch needs a train sampler with ``skip_once`` (:class:`datamodules.sampling.EpochShuffleSampler`),
    which is told how many samples of the restored epoch were already used.
    """

    def __init__(self, path: Path, run_fingerprint: str, every_n_batches: int = 0, sampler=None,
                 every_n_epochs: int = 1) -> None:
        if every_n_epochs < 1:
            raise ValueError(f"train.checkpoint_every_n_epochs={every_n_epochs} must be >= 1")
        if every_n_batches < 0:
            raise ValueError(f"train.checkpoint_every_n_batches={every_n_batches} must be >= 0")
        if every_n_batches and not hasattr(sampler, "skip_once"):
            raise ValueError(f"train.checkpoint_every_n_batches={every_n_batches}: resuming mid-epoch needs a train "
                             f"sampler with skip_once (datamodules/sampling.py), got {type(sampler).__name__}")
        self.path, self.run_fingerprint = Path(path), run_fingerprint
        self.every_n_batches, self.every_n_epochs, self.sampler = every_n_batches, every_n_epochs, sampler
        self.resumed_from: dict | None = None
        self._batch_in_epoch = 0
        self._batch_size = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._batch_in_epoch = batch_idx + 1
        self._batch_size = len(batch["image"])
        done = trainer.current_epoch * trainer.num_training_batches + batch_idx + 1
        if self.every_n_batches and done % self.every_n_batches == 0 and batch_idx + 1 < trainer.num_training_batches:
            self.save(trainer)
        kill_at = os.environ.get(KILL_ENV)
        if kill_at is not None and self.resumed_from is None and done == int(kill_at):
            os.kill(os.getpid(), signal.SIGKILL)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module) -> None:
        self._batch_in_epoch = 0
        done = trainer.current_epoch + 1
        if done % self.every_n_epochs == 0 or done == trainer.max_epochs:
            self.save(trainer)

    def save(self, trainer: L.Trainer) -> None:
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            trainer.save_checkpoint(tmp, weights_only=False)
            if getattr(trainer, "is_global_zero", True):  # only rank 0 writes the file
                if not tmp.is_file():  # Lightning's atomic save can swallow the error (e.g. a read-only folder)
                    writable = os.access(tmp.parent, os.W_OK)
                    raise OSError(errno.EACCES if not writable else errno.EIO,
                                  f"checkpoint {self.path} could not be saved: the temp file {tmp} was not written "
                                  f"({tmp.parent} is {'not ' if not writable else ''}writable)")
                with open(tmp, "rb") as f:
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

    def state_dict(self) -> dict:
        return {"fingerprint": self.run_fingerprint, "rng": rng_states(), "batch_in_epoch": self._batch_in_epoch,
                "samples_in_epoch": self._batch_in_epoch * self._batch_size}

    def load_state_dict(self, state: dict) -> None:
        if state["fingerprint"] != self.run_fingerprint:
            raise ValueError(f"checkpoint {self.path} belongs to another configuration of this run")
        set_rng_states(state["rng"])
        if state["samples_in_epoch"]:
            self.sampler.skip_once(state["samples_in_epoch"])
        self.resumed_from = {"batch_in_epoch": state["batch_in_epoch"]}
