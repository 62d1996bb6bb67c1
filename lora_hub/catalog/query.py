"""The small language of ``list --where`` and ``--sort``, parsed into plain data.

    where  := cond (("and" | "," | "&&") cond)*
    cond   := field op value
    op     := ">=" | "<=" | ">" | "<" | "=" | "==" | "!="
    sort   := ["-"] field            ("-" for descending)

A field is a fact of the version (``FIELDS``) or else the name of a metric. Numeric fields and
metrics compare with numbers (``size`` also takes ``50kB``/``2MiB``, ``params`` ``3.6k``/``1.2M``,
the units ``list`` prints); ``dtype``, ``task_type``, ``base_model``, ``name`` and ``namespace``
with words or quoted strings, ignoring case. A version without the metric never matches a
condition on it, and sorts last.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from lora_hub.errors import InvalidArgumentError

NUMERIC_FIELDS = {"version", "rank", "alpha", "params", "size", "created"}
TEXT_FIELDS = {"dtype", "task_type", "base_model", "name", "namespace"}
FIELDS = NUMERIC_FIELDS | TEXT_FIELDS
METRIC_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/@]*$")
MAX_METRIC_NAME = 96
MAX_CONDITIONS = 64
_SIZE_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12, "kib": 2**10, "mib": 2**20,
               "gib": 2**30, "tib": 2**40}  # fmt: skip
_COUNT_UNITS = {"k": 10**3, "m": 10**6, "b": 10**9}

Op = Literal[">=", "<=", ">", "<", "=", "!="]


@dataclass(frozen=True)
class Condition:
    field: str
    op: Op
    value: float | str
    is_metric: bool


@dataclass(frozen=True)
class Sort:
    field: str
    descending: bool
    is_metric: bool


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<op>>=|<=|==|!=|=|>|<)
      | (?P<sep>,|&&)
      | (?P<str>"[^"]*"|'[^']*')
      | (?P<word>[A-Za-z0-9_.\-/@+]+)
    )""",
    re.VERBOSE,
)


def check_metric_name(name: str) -> str:
    if len(name) > MAX_METRIC_NAME:
        raise InvalidArgumentError(
            f"metric name {name[:20]!r}... is {len(name):,} characters long; the limit is {MAX_METRIC_NAME}"
        )
    if not METRIC_NAME.match(name):
        raise InvalidArgumentError(
            f"metric name {name!r} is not valid",
            hint="start with a letter; use letters, digits, '_', '.', '-', '/', '@'",
        )
    if name in FIELDS:
        raise InvalidArgumentError(f"{name!r} is a built-in field and cannot be a metric name")
    return name


def _number(text: str, where: str, units: dict[str, int] | None = None) -> float:
    m = re.fullmatch(r"([0-9.eE+\-]+?)\s*([A-Za-z]+)", text)
    scaled = m is not None and units is not None and m.group(2).lower() in units
    try:
        value = float(m.group(1)) * units[m.group(2).lower()] if scaled else float(text)  # type: ignore[index,union-attr]
    except ValueError:
        known = f" (units: {', '.join(units)})" if units else ""
        raise InvalidArgumentError(f"{where}: {text!r} is not a number{known}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise InvalidArgumentError(f"{where}: {text!r} is not a finite number")
    return value


def _tokens(text: str) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise InvalidArgumentError(
                f"cannot read --where {text!r} at {text[pos : pos + 10]!r}",
                hint='write conditions like "accuracy>=0.8 and rank<=16"',
            )
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "word" and value.lower() == "and":
            kind = "sep"
        out.append((kind, value))
        pos = m.end()
    return out


def parse_where(text: str | None) -> list[Condition]:
    if not text or not text.strip():
        return []
    tokens = _tokens(text)
    conds: list[Condition] = []
    i = 0
    while i < len(tokens):
        chunk = tokens[i : i + 3]
        if len(chunk) < 3 or chunk[0][0] != "word" or chunk[1][0] != "op" or chunk[2][0] not in ("word", "str"):
            shown = " ".join(v for _, v in tokens[i : i + 3])
            raise InvalidArgumentError(
                f"--where: expected `field op value`, got {shown!r}",
                hint='write conditions like "accuracy>=0.8 and rank<=16" ("and" only; no "or")',
            )
        field, op, raw = chunk[0][1], chunk[1][1], chunk[2][1]
        op = "=" if op == "==" else op
        if field in TEXT_FIELDS:
            if op not in ("=", "!="):
                raise InvalidArgumentError(f"--where: {field} compares with = or != only")
            value: float | str = raw.strip("\"'")
            conds.append(Condition(field, op, value, False))  # type: ignore[arg-type]
        else:
            if chunk[2][0] == "str":
                raise InvalidArgumentError(f"--where: {field} compares with numbers, got {raw}")
            if field not in NUMERIC_FIELDS:
                check_metric_name(field)
            units = _SIZE_UNITS if field == "size" else _COUNT_UNITS if field == "params" else None
            number = _number(raw, f"--where {field}", units)
            conds.append(Condition(field, op, number, field not in FIELDS))  # type: ignore[arg-type]
        if len(conds) > MAX_CONDITIONS:
            raise InvalidArgumentError(f"--where has more than {MAX_CONDITIONS} conditions", hint="use fewer")
        i += 3
        if i < len(tokens):
            if tokens[i][0] != "sep":
                raise InvalidArgumentError(
                    f"--where: expected 'and' after {field}{op}{raw}, got {tokens[i][1]!r}",
                    hint='join conditions with "and" or ","',
                )
            i += 1
            if i == len(tokens):
                raise InvalidArgumentError("--where ends with 'and'")
    return conds


def parse_sort(text: str | None) -> Sort | None:
    if not text or not text.strip():
        return None
    text = text.strip()
    descending = text.startswith("-")
    field = text[1:] if text[:1] in "-+" else text
    if field in FIELDS:
        return Sort(field, descending, False)
    check_metric_name(field)
    return Sort(field, descending, True)
