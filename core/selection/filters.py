"""Row filters over a margin frame, composable with selection and recorded in export manifests.

A filter is `Filter(field, op, value)`; all filters of a list must hold (AND). Kinds:
  numeric range  field: any numeric frame column (m_ex, m_im, score_*, *_chars, ...) or "abs_m_im";
                 op: ">=", "<=", ">", "<", "=="; value: number
  quadrant       field "quadrant", op "in", value: list of core.selection.quadrants.QUADRANTS;
                 thresholds ex_split / im_split (None = medians of the whole frame, fixed by
                 `resolve_filters` so the manifest records the numbers actually used), im_axis
  flags          field "flagged" (the pair has ingest flags) or "truncated"; op "==", value: bool
  text           field "prompt" | "chosen" | "rejected" | "any"; op "~"; value: a literal,
                 case-insensitive substring searched in the full texts (needs the pair table)
`parse_filter` reads the CLI syntax: "m_ex>=0.5", "abs_m_im<0.1", "chosen_chars<=2000",
"quadrant=high_potential,ambiguous", "quadrant=high_potential;ex=0.5;im=0.2", "flagged=false",
"text~paris", "prompt~capital of".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from marginlens.core.errors import MarginLensError
from marginlens.core.selection.quadrants import IM_AXES, QUADRANTS, default_splits, quadrant_labels

# Filters saved in export manifests before a quadrant was renamed still parse. "already_learned" was wrong
# for pairs whose m_im < 0 under the |m_im| split.
RENAMED_QUADRANTS = {"already_learned": "policy_decided"}

TEXT_FIELDS = ("prompt", "chosen", "rejected", "any")
BOOL_FIELDS = ("flagged", "truncated")
NUMERIC_OPS = (">=", "<=", ">", "<", "==")


@dataclass(frozen=True)
class Filter:
    field: str
    op: str
    value: Any
    ex_split: float | None = None
    im_split: float | None = None
    im_axis: str = "abs"

    def to_dict(self) -> dict[str, Any]:
        out = {"field": self.field, "op": self.op, "value": self.value}
        if self.field == "quadrant":
            out.update(ex_split=self.ex_split, im_split=self.im_split, im_axis=self.im_axis)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Filter:
        return cls(**data)

    def __str__(self) -> str:
        value = ",".join(self.value) if isinstance(self.value, (list, tuple)) else self.value
        return f"{self.field}{'=' if self.op == 'in' else self.op}{value}"


_EXPR = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|=|>|<|~)\s*(.*?)\s*$", re.S)


def parse_filter(expr: str) -> Filter:
    """Parse one CLI filter expression (see the module docstring) into a Filter."""
    match = _EXPR.match(expr or "")
    if not match:
        raise MarginLensError(f"cannot read filter {expr!r}: expected FIELD OP VALUE, e.g. 'm_ex>=0.5'")
    field, op, raw = match.groups()
    if op == "~":
        field = "any" if field == "text" else field
        if field not in TEXT_FIELDS:
            raise MarginLensError(f"filter {expr!r}: text search works on {', '.join(TEXT_FIELDS)} or 'text'")
        if not raw:
            raise MarginLensError(f"filter {expr!r}: empty search text")
        return Filter(field, "~", raw)
    if field == "quadrant":
        if op not in ("=", "=="):
            raise MarginLensError(f"filter {expr!r}: use quadrant=NAME[,NAME...][;ex=X;im=Y;axis=abs|signed]")
        names, *options = raw.split(";")
        kwargs: dict[str, Any] = {}
        for option in options:
            key, _, val = option.partition("=")
            key = key.strip()
            if key in ("ex", "im"):
                kwargs[f"{key}_split"] = _number(val, expr)
            elif key == "axis":
                kwargs["im_axis"] = val.strip()
            else:
                raise MarginLensError(f"filter {expr!r}: unknown quadrant option {key!r} (ex, im, axis)")
        names = [RENAMED_QUADRANTS.get(n.strip(), n.strip()) for n in names.split(",") if n.strip()]
        return Filter("quadrant", "in", names, **kwargs)
    if field in BOOL_FIELDS:
        if op not in ("=", "=="):
            raise MarginLensError(f"filter {expr!r}: use {field}=true or {field}=false")
        low = raw.lower()
        if low not in ("true", "false", "1", "0", "yes", "no"):
            raise MarginLensError(f"filter {expr!r}: {field} takes true or false")
        return Filter(field, "==", low in ("true", "1", "yes"))
    return Filter(field, "==" if op == "=" else op, _number(raw, expr))


def _number(raw: str, expr: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise MarginLensError(f"filter {expr!r}: {raw!r} is not a number") from None


def _numeric(margins: pd.DataFrame, field: str) -> np.ndarray:
    if field == "abs_m_im" and "m_im" in margins:
        return np.abs(margins["m_im"].to_numpy(dtype=np.float64, na_value=np.nan))
    if field not in margins or not pd.api.types.is_numeric_dtype(margins[field]):
        numeric = [c for c in margins.columns if pd.api.types.is_numeric_dtype(margins[c])]
        raise MarginLensError(
            f"cannot filter on {field!r}: not a numeric column of the margin frame "
            f"(numeric columns: {', '.join(numeric + ['abs_m_im'])})"
        )
    return margins[field].to_numpy(dtype=np.float64, na_value=np.nan)


def resolve_filters(margins: pd.DataFrame, filters: list[Filter]) -> list[Filter]:
    """Validate the filters and fix data-dependent parameters (quadrant medians) to numbers."""
    out = []
    for f in filters:
        if f.field == "quadrant":
            unknown = [v for v in f.value if v not in QUADRANTS]
            if unknown or not f.value:
                raise MarginLensError(f"unknown quadrant {unknown or f.value!r} (expected {', '.join(QUADRANTS)})")
            if f.im_axis not in IM_AXES:
                raise MarginLensError(f"quadrant axis must be 'abs' or 'signed', got {f.im_axis!r}")
            if f.ex_split is None or f.im_split is None:
                if "m_ex" not in margins or "m_im" not in margins:
                    raise MarginLensError("quadrant filters need both the explicit and the implicit margin")
                med_ex, med_im = default_splits(margins["m_ex"].to_numpy(np.float64, na_value=np.nan),
                                                margins["m_im"].to_numpy(np.float64, na_value=np.nan), f.im_axis)
                f = replace(f, ex_split=med_ex if f.ex_split is None else f.ex_split,
                            im_split=med_im if f.im_split is None else f.im_split)
        elif f.op == "~":
            if f.field not in TEXT_FIELDS:
                raise MarginLensError(f"text search works on {', '.join(TEXT_FIELDS)}, not {f.field!r}")
        elif f.field in BOOL_FIELDS:
            if f.field not in margins:
                raise MarginLensError(f"cannot filter on {f.field!r}: the margin frame has no such column")
        elif f.op in NUMERIC_OPS:
            _numeric(margins, f.field)
        else:
            raise MarginLensError(f"unknown filter operator {f.op!r} in {f}")
        out.append(f)
    return out


def _text_hits(texts: pa.Table, field: str, needle: str) -> np.ndarray:
    """Per table row: does `field` contain `needle` (case-insensitive literal)? Vectorised in Arrow."""
    n = texts.num_rows
    if field == "any":
        return _text_hits(texts, "prompt", needle) | _text_hits(texts, "chosen", needle) | _text_hits(
            texts, "rejected", needle
        )
    column = texts.column(field)
    if field != "prompt":
        return pc.fill_null(pc.match_substring(column, needle, ignore_case=True), False).to_numpy(
            zero_copy_only=False
        )
    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    contents = pc.struct_field(pc.list_flatten(column), "content")
    hit = pc.fill_null(pc.match_substring(contents, needle, ignore_case=True), False).to_numpy(zero_copy_only=False)
    parents = pc.list_parent_indices(column).to_numpy()
    out = np.zeros(n, dtype=bool)
    out[parents[hit]] = True
    return out


def filter_mask(margins: pd.DataFrame, filters: list[Filter], texts: pa.Table | None = None) -> np.ndarray:
    """Boolean mask over the frame's rows: True where every filter holds. Missing values never match.

    `texts` is the pair table (core.data.pairs.load_texts) and is only read for text filters; the
    frame's "row" column maps frame rows to table rows.
    """
    mask = np.ones(len(margins), dtype=bool)
    for f in resolve_filters(margins, filters):
        if f.field == "quadrant":
            labels = quadrant_labels(
                margins["m_ex"].to_numpy(np.float64, na_value=np.nan),
                margins["m_im"].to_numpy(np.float64, na_value=np.nan),
                f.ex_split, f.im_split, f.im_axis,
            ).labels
            mask &= np.isin(labels, list(f.value))
        elif f.op == "~":
            if texts is None:
                raise MarginLensError("text filters need the pair texts: pass texts=core.data.pairs.load_texts(...)")
            rows = margins["row"].to_numpy() if "row" in margins else np.arange(len(margins))
            mask &= _text_hits(texts, f.field, str(f.value))[rows]
        elif f.field in BOOL_FIELDS:
            mask &= margins[f.field].to_numpy(dtype=bool) == bool(f.value)
        else:
            values = _numeric(margins, f.field)
            with np.errstate(invalid="ignore"):
                mask &= {
                    ">=": np.greater_equal, "<=": np.less_equal, ">": np.greater, "<": np.less, "==": np.equal,
                }[f.op](values, float(f.value))
    return mask
