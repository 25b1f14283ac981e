"""Tables beside images: column types, the fitted preprocessing (category vocabularies, scalers) and its JSON file.

A table's feature columns become one float tensor per row, categorical columns first (their category index) and
continuous columns after them (standardised with the training rows' mean and standard deviation), the order TIP's
tabular encoder reads; a missing cell is 0 there and True in the row's missing mask. The fitted preprocessing is
saved beside a run (`tabular.json`) and applied unchanged at inference, so a category keeps its index.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from mimkit.core.errors import ConfigError, DataError

log = logging.getLogger("mimkit")

PREPROCESSING_FILE = "tabular.json"
# a numeric column with at most this many distinct values is read as categorical unless named otherwise
MAX_NUMERIC_CATEGORIES = 10
NUMERIC_SHARE = 0.95  # a column is numeric when this share of its filled cells are numbers


def read_table(path: str | Path) -> pd.DataFrame:
    """A CSV, TSV, JSONL or Parquet file as a DataFrame (cells kept as written: types are inferred later)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"table {path} does not exist")
    suffix = "".join(path.suffixes[-2:]).lower() if path.suffix == ".gz" else path.suffix.lower()
    try:
        if suffix in (".parquet", ".pq"):
            return pd.read_parquet(path)
        if suffix in (".jsonl", ".jsonl.gz"):
            return pd.read_json(path, lines=True, dtype=False)
        if suffix in (".csv", ".csv.gz", ".tsv", ".txt"):
            return pd.read_csv(path, sep="\t" if suffix in (".tsv", ".txt") else ",", dtype=str,
                               keep_default_na=True)
    except (ValueError, OSError, pd.errors.ParserError) as error:
        raise DataError(f"table {path} could not be read: {str(error).splitlines()[0]}") from None
    raise DataError(f"table {path}: expected a .csv, .tsv, .jsonl or .parquet file, found {path.suffix!r}")


def _missing(series: pd.Series) -> np.ndarray:
    text = series.astype(str).str.strip()
    return (series.isna() | text.eq("") | text.str.lower().isin(["nan", "na", "n/a", "none", "null"])).to_numpy()


def _numbers(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce")


@dataclass
class Column:
    """One feature column: its kind and, once fitted, its vocabulary (categorical) or mean and std (continuous)."""

    name: str
    kind: str                                          # "categorical" or "continuous"
    vocabulary: list[str] = field(default_factory=list)
    mean: float = 0.0
    std: float = 1.0


@dataclass
class TablePreprocessor:
    """The fitted preprocessing of a table's feature columns and target; `transform` turns rows into tensors."""

    columns: list[Column]
    target: str | None = None
    classes: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, frame: pd.DataFrame, features: Sequence[str] | None = None, *, target: str | None = None,
            exclude: Sequence[str] = (), categorical: Sequence[str] = (), continuous: Sequence[str] = (),
            max_categories: int = MAX_NUMERIC_CATEGORIES) -> "TablePreprocessor":
        """Infer each column's kind (numeric with more than `max_categories` values: continuous; anything else:
        categorical), overridden by `categorical` / `continuous`, and fit vocabularies and scalers on `frame`."""
        names = list(features) if features is not None else [c for c in frame.columns
                                                              if c not in set(exclude) and c != target]
        unknown = sorted(set(names) | set(categorical) | set(continuous) - set(frame.columns))
        unknown = [n for n in unknown if n not in frame.columns]
        if unknown:
            raise ConfigError(f"column(s) {', '.join(map(repr, unknown))} are not in the table; it has "
                              f"{', '.join(map(str, frame.columns))}")
        both = sorted(set(categorical) & set(continuous))
        if both:
            raise ConfigError(f"column(s) {', '.join(both)} are named both categorical and continuous")
        if not names:
            raise ConfigError("the table has no feature columns left (all excluded or used as image/target)")
        columns = []
        for name in names:
            series = frame[name]
            present = ~_missing(series)
            numbers = _numbers(series[present])
            # mostly numbers: a numeric column whose few other cells are wrong-type values (bad rows, see transform)
            numeric = len(numbers) > 0 and numbers.notna().mean() >= NUMERIC_SHARE
            kind = ("categorical" if name in categorical else "continuous" if name in continuous else
                    "continuous" if numeric and numbers.nunique() > max_categories else "categorical")
            if kind == "continuous":
                if not numbers.notna().any():
                    raise DataError(f"column {name!r} is continuous but holds no number (first: "
                                    f"{series[present].iloc[0] if present.any() else 'only empty cells'!r})")
                values = numbers.dropna().to_numpy(float)
                std = float(values.std()) if len(values) > 1 else 1.0
                columns.append(Column(name, kind, mean=float(values.mean()) if len(values) else 0.0,
                                      std=std if std > 1e-12 else 1.0))
            else:
                columns.append(Column(name, kind, vocabulary=sorted({_category(v) for v in series[present]})))
        empty = [c.name for c in columns if c.kind == "categorical" and not c.vocabulary]
        if empty:
            raise DataError(f"column(s) {', '.join(empty)} hold no values at all")
        columns.sort(key=lambda c: c.kind != "categorical")  # TIP's order: categorical, then continuous
        classes = []
        if target is not None:
            if target not in frame.columns:
                raise ConfigError(f"target column {target!r} is not in the table; it has "
                                  f"{', '.join(map(str, frame.columns))}")
            classes = target_classes(frame[target])
        return cls(columns, target, classes)

    # ------------------------------------------------------------------ shape
    @property
    def categorical(self) -> list[Column]:
        return [c for c in self.columns if c.kind == "categorical"]

    @property
    def continuous(self) -> list[Column]:
        return [c for c in self.columns if c.kind == "continuous"]

    @property
    def categorical_sizes(self) -> list[int]:
        """Categories per categorical column (TIP's field lengths)."""
        return [len(c.vocabulary) for c in self.categorical]

    @property
    def num_continuous(self) -> int:
        return len(self.continuous)

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.columns]

    # ------------------------------------------------------------------ applying
    def transform(self, frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, list[tuple[int, str]]]:
        """(values float32 (N, columns), missing bool (N, columns), bad rows [(row, reason)]): a row with a value
        of the wrong type is bad; a category not seen in fitting counts as missing (and is logged)."""
        lacking = [c.name for c in self.columns if c.name not in frame.columns]
        if lacking:
            raise DataError(f"the table lacks the column(s) {', '.join(lacking)} the preprocessing was fitted on")
        n = len(frame)
        values = np.zeros((n, len(self.columns)), np.float32)
        missing = np.zeros((n, len(self.columns)), bool)
        bad: dict[int, str] = {}
        unseen = 0
        for j, column in enumerate(self.columns):
            series = frame[column.name]
            absent = _missing(series)
            missing[:, j] = absent
            if column.kind == "continuous":
                numbers = _numbers(series).to_numpy(float)
                wrong = ~absent & ~np.isfinite(numbers)
                for i in np.flatnonzero(wrong):
                    bad.setdefault(int(i), f"column {column.name!r}: {series.iloc[i]!r} is not a number")
                values[:, j] = np.where(absent | wrong, 0.0, (np.nan_to_num(numbers) - column.mean) / column.std)
                missing[:, j] |= wrong
            else:
                index = {v: k for k, v in enumerate(column.vocabulary)}
                codes = np.array([index.get(_category(v), -1) if not a else -1 for v, a in zip(series, absent)])
                new = ~absent & (codes < 0)
                unseen += int(new.sum())
                missing[:, j] |= new
                values[:, j] = np.maximum(codes, 0)
        if unseen:
            log.warning("%d table cell(s) hold categories not seen in fitting; they are read as missing", unseen)
        return values, missing, sorted(bad.items())

    def label(self, value) -> int | None:
        """The class index of a target cell, None when it is missing or not a known class."""
        if self.target is None or _missing(pd.Series([value]))[0]:
            return None
        text = _category(value)
        return self.classes.index(text) if text in self.classes else None

    # ------------------------------------------------------------------ saving
    def to_dict(self) -> dict:
        return {"columns": [asdict(c) for c in self.columns], "target": self.target, "classes": self.classes}

    @classmethod
    def from_dict(cls, data: dict) -> "TablePreprocessor":
        try:
            return cls([Column(**c) for c in data["columns"]], data.get("target"), list(data.get("classes") or []))
        except (KeyError, TypeError) as error:
            raise DataError(f"a table preprocessing record lacks {error}; expected columns, target, classes") from None

    def save(self, path: str | Path) -> Path:
        """Write the fitted preprocessing as JSON (a folder gets `tabular.json`)."""
        path = Path(path)
        if path.suffix != ".json":
            path = path / PREPROCESSING_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TablePreprocessor":
        """Read a saved preprocessing (a JSON file, or a run folder holding `tabular.json`)."""
        path = Path(path)
        if path.is_dir():
            path = path / PREPROCESSING_FILE
        if not path.is_file():
            raise DataError(f"{path}: no saved table preprocessing (written by pretraining as {PREPROCESSING_FILE})")
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except json.JSONDecodeError as error:
            raise DataError(f"{path} is not valid JSON: {error}") from None


def target_classes(series: pd.Series) -> list[str]:
    """The classes of a target column: numbers in numeric order, else text in sorted order (missing cells out)."""
    labels = series[~_missing(series)]
    numbers = _numbers(labels)
    if len(numbers) and numbers.notna().all():
        return [_category(v) for v in sorted(set(numbers.tolist()))]
    return sorted({_category(v) for v in labels})


def _category(value) -> str:
    """A categorical cell as text; 1 and 1.0 are the same category."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    text = str(value).strip()
    try:
        number = float(text)
        return str(int(number)) if number.is_integer() else text
    except ValueError:
        return text


__all__ = ["TablePreprocessor", "Column", "read_table", "target_classes", "PREPROCESSING_FILE",
           "MAX_NUMERIC_CATEGORIES"]
