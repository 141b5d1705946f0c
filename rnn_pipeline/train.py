"""One training run: mini-batch gradient descent with early stopping (best weights restored), ReduceLROnPlateau,
gradient clipping and fixed seeds. The loop is deliberately bare: a small RNN's epoch is dominated by per-step
overhead, so anything extra per batch shows in the epoch time (see benchmarks/)."""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from rnn_pipeline.errors import PipelineError
from rnn_pipeline.models import ClassifierSpec, ForecasterSpec, build_model

log = logging.getLogger(__name__)


LOG_SECONDS = 15.0  # with log_every, an epoch line at least this often (and after the first epoch) on slow epochs


class TrainingDiverged(PipelineError):
    """The loss became NaN or infinite."""


@dataclass
class FitResult:
    model: torch.nn.Module
    best_val: float
    best_epoch: int
    epochs: int
    history: list[dict] = field(default_factory=list)  # per epoch: train_loss, val_loss, lr, seconds
    seconds: float = 0.0


def setup_torch(threads: int, seed: int) -> None:
    """Threads (1 is fastest and stable for small RNNs on CPU), denormal flushing, seeds."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    torch.set_flush_denormal(True)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise PipelineError("training.device is 'cuda' but no CUDA device is available")
    return torch.device(name)


def make_optimizer(name: str, params, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    if name == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer '{name}'")


def fit(spec: ForecasterSpec | ClassifierSpec, train, val, *, lr: float, batch_size: int, optimizer: str = "adam",
        weight_decay: float = 0.0, max_epochs: int = 100, patience: int = 10, lr_patience: int = 5,
        lr_factor: float = 0.5, clip_grad_norm: float | None = 1.0, loss_steps: str = "last", burn_in: float = 0.5,
        seed: int = 0, device: torch.device | str = "cpu",
        on_epoch: Callable[[int, float], None] | None = None, log_every: int = 0,
        max_seconds: float | None = None) -> FitResult:
    """Train one model. `train`/`val`: a features.WindowSet (forecasting) or a sequences.SequenceSet
    (classification): each gives a batch loss, a validation loss and the epoch's order. `on_epoch(epoch, val_loss)`
    is called after every epoch (the tuner's pruning hook; it may raise to stop). Training also stops after the
    epoch that passes `max_seconds`. Returns the model with the best validation weights restored."""
    torch.manual_seed(seed)
    device = torch.device(device)
    model = build_model(spec).to(device)
    opt = make_optimizer(optimizer, model.parameters(), lr, weight_decay)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=lr_factor, patience=lr_patience)
    train, val = train.to(device), val.to(device)
    gen = torch.Generator().manual_seed(seed)
    n = len(train)
    best_val, best_epoch, best_state, bad = math.inf, -1, None, 0
    history: list[dict] = []
    t_start = last_log = time.perf_counter()
    if getattr(model, "highway", None) is not None:
        # a forecaster with a highway starts as the linear forecast fitted in closed form on the training windows;
        # that start is epoch 0, kept if no epoch of training beats it on validation
        alpha = model.start_from_linear(*train.batch())
        best_val, best_epoch, best_state = val.eval_loss(model), 0, copy.deepcopy(model.state_dict())
        log.info("linear start (ridge alpha %g): val %.5f", alpha, best_val)
    for epoch in range(max_epochs):
        t0 = time.perf_counter()
        model.train()
        perm = train.order(gen)
        running = 0.0
        for i in range(0, n, batch_size):
            idx = perm[i:i + batch_size]
            loss = train.loss(model, idx, loss_steps=loss_steps, burn_in=burn_in)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            opt.step()
            running += loss.item() * len(idx)
        train_loss = running / n
        val_loss = val.eval_loss(model)
        if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
            raise TrainingDiverged(f"loss is not finite at epoch {epoch + 1} (train {train_loss}, val {val_loss})")
        sched.step(val_loss)
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "val_loss": val_loss,
                        "lr": opt.param_groups[0]["lr"], "seconds": time.perf_counter() - t0})
        if val_loss < best_val - 1e-7:
            best_val, best_epoch, bad = val_loss, epoch + 1, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            bad += 1
        if log_every and ((epoch + 1) % log_every == 0 or epoch == 0
                          or time.perf_counter() - last_log >= LOG_SECONDS):
            last_log = time.perf_counter()
            log.info("epoch %d/%d  train %.5f  val %.5f  best %.5f (epoch %d)  lr %.2g", epoch + 1, max_epochs,
                     train_loss, val_loss, best_val, best_epoch, opt.param_groups[0]["lr"])
        if on_epoch is not None:
            on_epoch(epoch + 1, val_loss)
        if bad >= patience:
            break
        if max_seconds is not None and time.perf_counter() - t_start >= max_seconds:
            log.info("stopping after epoch %d: the time limit of %.0fs is reached", epoch + 1, max_seconds)
            break
    model.load_state_dict(best_state)
    model.eval()
    return FitResult(model.cpu(), best_val, best_epoch, len(history), history, time.perf_counter() - t_start)
