"""The self-contained model: weights (safetensors) + preprocessing (JSON). Loading it unpickles nothing.
ForecastBundle (forecasting/bundle.py) forecasts; ClassifierBundle (classification/bundle.py) classifies texts or
numeric sequences. Here: the file format both share, and `load_bundle`, which registered models call (their stored
pyfunc_model.py imports it from this path).

The same object answers in the flow (in memory), in the registered MLflow pyfunc, in the CLI and in any
server, always in original units. Both classes have the same methods for what differs between the tasks where a
model is served (the signature, warm-up, request and file parsing, the answers, the inference-log records), so the
serving layer holds no task branches.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

WINDOW_ID = "window_id"
PREPROCESS_FILE, WEIGHTS_FILE = "preprocess.json", "weights.safetensors"
LABEL = "label"


def save_files(folder: str | Path, meta: dict, model: torch.nn.Module) -> dict[str, str]:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PREPROCESS_FILE).write_text(json.dumps(meta, indent=2))
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / WEIGHTS_FILE))
    return {"preprocess": str(folder / PREPROCESS_FILE), "weights": str(folder / WEIGHTS_FILE)}


def labelled(out, id_column: str, ids):
    """The pyfunc's answer to `inputs_frame(inputs)` in the order of the inputs, labelled with their ids (`predict`
    sends numbered windows or items: the number orders them)."""
    out = out.sort_values(id_column).reset_index(drop=True)
    out[id_column] = ids
    return out


def load_weights(model: torch.nn.Module, weights_path: str | Path) -> torch.nn.Module:
    model.load_state_dict(load_file(str(weights_path)))
    model.eval()
    return model


def load_bundle(preprocess_path: str | Path, weights_path: str | Path):
    """A saved bundle (ForecastBundle, PanelBundle or ClassifierBundle, as its preprocess.json says) with its
    weights."""
    from rnn_pipeline.classification.bundle import ClassifierBundle
    from rnn_pipeline.forecasting.bundle import ForecastBundle
    from rnn_pipeline.panel.bundle import PanelBundle

    meta = json.loads(Path(preprocess_path).read_text())
    cls = {"classification": ClassifierBundle, "panel": PanelBundle}.get(meta.get("task", "forecasting"),
                                                                         ForecastBundle)
    return cls.from_meta(meta, weights_path)
