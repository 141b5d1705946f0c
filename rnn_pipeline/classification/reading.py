"""Sequence classification input: texts (one per row) and numeric sequences (a long table, one row per step)
read into validated raw items, and written back in the user's format for a retrain. A refusal says where: file, column,
row and value, as far as they are known.

Two input kinds:
- text: one row per text (`text_column`, `label_column`).
- numeric: a long table, one row per step (`sequence_column`, optional `step_column`, channels, `label_column`);
  each sequence becomes a (steps, channels) float64 array.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from rnn_pipeline.data.validation import numeric_columns
from rnn_pipeline.errors import DataValidationError

SPLITS = ("train", "val", "test")


@dataclass
class RawSequences:
    """Validated raw inputs: texts (str) or numeric sequences ((steps, channels) float64), one per item."""

    kind: str  # "text" | "numeric"
    items: list
    ids: np.ndarray  # sequence ids (numeric) or 1-based row numbers (text)
    labels: np.ndarray | None  # str per item, None when the input has no labels
    split: np.ndarray | None = None  # "train"/"val"/"test" per item, from data.split_column
    channels: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def subset(self, idx: np.ndarray) -> RawSequences:
        return RawSequences(self.kind, [self.items[i] for i in idx], self.ids[idx],
                            None if self.labels is None else self.labels[idx],
                            None if self.split is None else self.split[idx], self.channels)


def _labels(frame: pd.DataFrame, source: str, column: str) -> np.ndarray:
    raw = frame[column]
    missing = raw.isna().to_numpy() | raw.astype(str).str.strip().eq("").to_numpy()
    if missing.any():
        pos = int(np.flatnonzero(missing)[0])
        raise DataValidationError("missing label", source=source, column=column, row=pos + 1)
    return _label_strings(raw)


def _label_strings(raw: pd.Series) -> np.ndarray:
    """Labels as strings; integral floats (a CSV column of 1.0, 2.0) read as '1', '2'."""
    if pd.api.types.is_float_dtype(raw) and np.all(np.mod(raw.to_numpy(), 1) == 0):
        raw = raw.astype("int64")
    return np.asarray([str(v).strip() for v in raw], dtype=object)


def _split_values(frame: pd.DataFrame, source: str, column: str | None) -> np.ndarray | None:
    if column is None:
        return None
    if column not in frame.columns:
        raise DataValidationError(f"missing split column '{column}' (data.split_column)", source=source)
    values = frame[column].astype(str).str.strip().str.lower().to_numpy()
    bad = ~np.isin(values, SPLITS)
    if bad.any():
        pos = int(np.flatnonzero(bad)[0])
        raise DataValidationError("split must be train, val or test", source=source, column=column, row=pos + 1,
                                  value=frame[column].iloc[pos])
    return values


def read_texts(frame: pd.DataFrame, source: str, text_column: str, label_column: str | None,
               split_column: str | None = None) -> RawSequences:
    """One text per row. Empty or whitespace-only text is refused with its row; so is a missing label."""
    if text_column not in frame.columns:
        raise DataValidationError(f"missing text column '{text_column}' (columns present: "
                                  f"{', '.join(map(str, frame.columns))})", source=source)
    if label_column is not None and label_column not in frame.columns:
        raise DataValidationError(f"missing label column '{label_column}' (columns present: "
                                  f"{', '.join(map(str, frame.columns))})", source=source)
    raw = frame[text_column]
    empty = raw.isna().to_numpy() | raw.astype(str).str.strip().eq("").to_numpy()
    if empty.any():
        pos = int(np.flatnonzero(empty)[0])
        raise DataValidationError(f"empty text ({int(empty.sum())} such rows)", source=source, column=text_column,
                                  row=pos + 1, value=raw.iloc[pos])
    labels = None if label_column is None else _labels(frame, source, label_column)
    return RawSequences("text", raw.astype(str).tolist(), np.arange(1, len(frame) + 1), labels,
                        _split_values(frame, source, split_column))


def channel_columns(frame: pd.DataFrame, sequence_column: str, step_column: str | None, label_column: str | None,
                    split_column: str | None, configured: list[str]) -> list[str]:
    if configured:
        return list(configured)
    skip = {sequence_column, step_column, label_column, split_column}
    return [str(c) for c in frame.columns if c not in skip]


def read_sequences(frame: pd.DataFrame, source: str, sequence_column: str, step_column: str | None,
                   channels: list[str], label_column: str | None, split_column: str | None = None,
                   ) -> RawSequences:
    """A long table -> one (steps, channels) array per sequence id, in order of first appearance; rows ordered by
    `step_column` within a sequence. Non-numeric or missing channel values (a ragged row), duplicate steps and a
    sequence with two labels are refused with file, column, row and value."""
    need = [sequence_column, *([step_column] if step_column else []), *channels,
            *([label_column] if label_column else [])]
    have = [str(c) for c in frame.columns]
    for col in need:
        if col not in frame.columns:
            what = "label column" if col == label_column else "column"
            raise DataValidationError(f"missing {what} '{col}' (columns present: {', '.join(have)})", source=source)
    if not channels:
        raise DataValidationError("no channel columns: a sequence needs at least one numeric column", source=source)
    ids = frame[sequence_column]
    if ids.isna().any():
        pos = int(np.flatnonzero(ids.isna().to_numpy())[0])
        raise DataValidationError("missing sequence id", source=source, column=sequence_column, row=pos + 1)
    # a missing cell is a ragged step: refused (filling it from a neighbour could borrow from another sequence)
    values = numeric_columns(frame, source, channels, "error").to_numpy()
    labels = None if label_column is None else _labels(frame, source, label_column)
    split = _split_values(frame, source, split_column)
    groups = pd.Series(np.arange(len(frame))).groupby(ids.to_numpy(), sort=False).indices
    items, out_ids, out_labels, out_split = [], [], [], []
    step = None
    if step_column:
        step = pd.to_numeric(frame[step_column], errors="coerce").to_numpy(dtype="float64")
        if np.isnan(step).any():
            pos = int(np.flatnonzero(np.isnan(step))[0])
            raise DataValidationError("step is not a number", source=source, column=step_column, row=pos + 1,
                                      value=frame[step_column].iloc[pos])
    for sid, rows in groups.items():
        if step is not None:
            rows = rows[np.argsort(step[rows], kind="stable")]
            dup = np.flatnonzero(np.diff(step[rows]) == 0)
            if dup.size:
                r = int(rows[dup[0] + 1])
                raise DataValidationError(f"sequence {sid!r} has step {step[r]:g} twice", source=source,
                                          column=step_column, row=r + 1, value=frame[step_column].iloc[r])
        for col, arr in (("label", labels), ("split", split)):
            if arr is not None and len(set(arr[rows])) > 1:
                r = int(rows[np.flatnonzero(arr[rows] != arr[rows[0]])[0]])
                column = label_column if col == "label" else split_column
                raise DataValidationError(f"sequence {sid!r} has two {col}s ({arr[rows[0]]!r} and {arr[r]!r})",
                                          source=source, column=column, row=r + 1, value=arr[r])
        items.append(values[rows])
        out_ids.append(sid)
        if labels is not None:
            out_labels.append(labels[rows[0]])
        if split is not None:
            out_split.append(split[rows[0]])
    return RawSequences("numeric", items, np.asarray(out_ids), None if labels is None else np.asarray(out_labels),
                        None if split is None else np.asarray(out_split), list(channels))


def read_items(frame: pd.DataFrame, source: str, d, labels: bool, split: bool = False) -> RawSequences:
    """The training format of `d` (a DataConfig): texts, or a long table of numeric sequences. labels=True: the
    label column must be there; otherwise it is read when present (a monitoring batch may or may not carry labels).
    split=True: the configured split column must be there (training)."""
    label_column = d.label_column if (labels or d.label_column in frame.columns) else None
    split_column = d.split_column if split else None
    if d.text_column:
        return read_texts(frame, source, d.text_column, label_column, split_column)
    channels = channel_columns(frame, d.sequence_column, d.step_column, d.label_column, d.split_column,
                               d.channel_columns)
    step = d.step_column if d.step_column and (labels or d.step_column in frame.columns) else None
    return read_sequences(frame, source, d.sequence_column, step, channels, label_column, split_column)


def items_frame(raw: RawSequences, d) -> pd.DataFrame:
    """Raw items back in the user's format (with their ids and labels): what a retrain reads."""
    if raw.kind == "text":
        out = pd.DataFrame({d.text_column: raw.items})
        if raw.labels is not None:
            out[d.label_column] = raw.labels
        return out
    lengths = [len(x) for x in raw.items]
    out = pd.DataFrame(np.concatenate(raw.items), columns=raw.channels)
    out.insert(0, d.sequence_column, np.repeat(raw.ids, lengths))
    if d.step_column:  # without one, row order is step order
        out.insert(1, d.step_column, np.concatenate([np.arange(n) for n in lengths]))
    if raw.labels is not None:
        out[d.label_column] = np.repeat(raw.labels, lengths)
    return out


def sequences_from_arrays(sequences: list, channels: list[str]) -> list[np.ndarray]:
    """Raw nested lists (one list of steps per sequence, one list of channel values per step) -> float arrays.
    An empty sequence, a ragged step (wrong number of channels) or a non-numeric value is refused."""
    out = []
    for i, seq in enumerate(sequences):
        if not isinstance(seq, (list, tuple, np.ndarray)):
            raise DataValidationError(f"sequence {i} is not a list of steps", value=seq)
        if len(seq) == 0:
            raise DataValidationError(f"sequence {i} is empty")
        for j, stp in enumerate(seq):
            if np.ndim(stp) != 1 or len(stp) != len(channels):
                raise DataValidationError(f"sequence {i}, step {j}: ragged: {len(np.atleast_1d(stp))} values, "
                                          f"the model reads {len(channels)} channels {channels}")
        try:
            arr = np.asarray(seq, dtype="float64")
        except (TypeError, ValueError):
            raise DataValidationError(f"sequence {i}: a value is not a number") from None
        if not np.isfinite(arr).all():
            j, c = np.argwhere(~np.isfinite(arr))[0]
            raise DataValidationError(f"sequence {i}, step {j}: not a finite number", column=channels[c],
                                      value=arr[j, c])
        out.append(arr)
    return out
