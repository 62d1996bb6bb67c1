"""Model cards (README.md): what an import reads from one, and the card an export writes.

An exported card is YAML metadata (front matter) and a body. lora-hub owns some metadata keys
(``OWNED_KEYS``) and one block of the body, between ``BEGIN`` and ``END``; everything else a user
wrote in an existing card is kept as it is. The card is a pure function of its inputs (no dates),
so exporting the same version twice gives the same bytes, which is what lets a re-export see that
nothing changed.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Mapping
from typing import Any

import yaml

BEGIN = "<!-- lorahub:begin -->"
END = "<!-- lorahub:end -->"
OWNED_KEYS = ("library_name", "base_model", "base_model_relation", "model-index")
_FRONT = re.compile(r"\A---[ \t]*\n(.*?)\n---[ \t]*(?:\n|\Z)", re.S)
_METRIC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-/@]*$")
_TASKS = {
    "CAUSAL_LM": "text-generation",
    "SEQ_2_SEQ_LM": "text2text-generation",
    "SEQ_CLS": "text-classification",
    "TOKEN_CLS": "token-classification",
    "QUESTION_ANS": "question-answering",
    "FEATURE_EXTRACTION": "feature-extraction",
}


def split_card(text: str) -> tuple[dict[str, Any], str]:
    """(metadata, body) of a card; unreadable front matter counts as none (it is then body text)."""
    m = _FRONT.match(text)
    if not m:
        return {}, text
    try:
        meta = yaml.safe_load(m.group(1))
    except yaml.YAMLError:
        return {}, text
    return (meta if isinstance(meta, dict) else {}), text[m.end() :]


def card_metrics(card: Mapping[str, Any]) -> tuple[dict[str, float], list[str]]:
    """The numeric metrics of a card's ``model-index`` (by metric ``type``, else ``name``), and a
    note for each one left out (not a number, a name lora-hub cannot store, a repeat)."""
    metrics: dict[str, float] = {}
    notes: list[str] = []
    index = card.get("model-index")
    for entry in index if isinstance(index, list) else []:
        for result in entry.get("results") or [] if isinstance(entry, dict) else []:
            for m in result.get("metrics") or [] if isinstance(result, dict) else []:
                if not isinstance(m, dict):
                    continue
                key = str(m.get("type") or m.get("name") or "").strip().replace(" ", "_")
                value = m.get("value")
                if isinstance(value, str):
                    with contextlib.suppress(ValueError):
                        value = float(value)
                if not _METRIC_NAME.match(key) or len(key) > 100:
                    notes.append(f"card metric {key[:40]!r} left out: not a name lora-hub can store")
                elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                    notes.append(f"card metric {key} left out: {str(value)[:40]!r} is not a finite number")
                elif key in metrics and metrics[key] != float(value):
                    notes.append(f"card metric {key} given twice; the first value ({metrics[key]:g}) is kept")
                else:
                    metrics.setdefault(key, float(value))
    return metrics, notes


def card_base_models(card: Mapping[str, Any]) -> list[str]:
    base = card.get("base_model")
    if isinstance(base, str):
        return [base]
    return [str(b) for b in base] if isinstance(base, list) else []


def model_index(name: str, metrics: Mapping[str, float], task: str | None) -> list[dict[str, Any]]:
    """``model-index`` for lora-hub's metrics. The Hub's schema wants a task and a dataset for each
    result; lora-hub records neither, so they say where the numbers come from."""
    return [
        {
            "name": name,
            "results": [
                {
                    "task": {"type": task or "other"},
                    "dataset": {"type": "lora-hub", "name": "metrics recorded in lora-hub"},
                    "metrics": [{"type": k, "value": v, "name": k} for k, v in sorted(metrics.items())],
                }
            ],
        }
    ]


def task_of(peft_task: str | None) -> str | None:
    return _TASKS.get(peft_task or "")


def render(existing: str | None, metadata: Mapping[str, Any], block: str) -> str:
    """The card: ``existing``'s metadata updated with ``metadata`` (lora-hub's keys replaced, ``tags``
    merged), its body kept with the lora-hub block replaced (or added at the end)."""
    meta, body = split_card(existing or "")
    ours = {k: v for k, v in metadata.items() if k != "tags"}
    # lora-hub's keys first, in a fixed order, then the user's: rendering the card again from its
    # own output gives the same bytes.
    out = {**ours, **{k: v for k, v in meta.items() if k not in OWNED_KEYS and k not in ours and k != "tags"}}
    tags = [t for t in meta.get("tags") or [] if isinstance(t, str)]
    tags += [t for t in metadata.get("tags", []) if t not in tags]
    if tags:
        out["tags"] = tags
    front = yaml.safe_dump(out, sort_keys=False, allow_unicode=True, width=1000)
    marked = f"{BEGIN}\n{block.strip()}\n{END}"
    start, end = body.find(BEGIN), body.find(END)
    if start != -1 and end > start:
        body = body[:start] + marked + body[end + len(END) :]
    else:
        body = (body.rstrip() + "\n\n" if body.strip() else "\n") + marked + "\n"
    return f"---\n{front}---\n{body}"


FILES_TITLE = "files"
_FILE_REF = re.compile(r"`([^`\n]+)` \(`(sha256:[0-9a-f]{64})`\)")


def exported_files(text: str | None) -> dict[str, str]:
    """The files an earlier export wrote, by path, with their sha256, as its card's lora-hub block
    lists them (the ``files`` JSON block; in older cards, the ``Files:`` line); {} without a block."""
    _, body = split_card(text or "")
    start, end = body.find(BEGIN), body.find(END)
    if start == -1 or end < start:
        return {}
    block = body[start:end]
    m = re.search(rf"<summary>{FILES_TITLE}</summary>\s*```json\n(.*?)\n```", block, re.S)
    if m:
        with contextlib.suppress(ValueError):
            value = json.loads(m.group(1))
            if isinstance(value, dict):
                return {str(k): str(v) for k, v in value.items()}
    return {path: digest for path, digest in _FILE_REF.findall(block)}


def json_block(title: str, value: Any) -> str:
    body = json.dumps(value, indent=2, sort_keys=True)
    return f"<details><summary>{title}</summary>\n\n```json\n{body}\n```\n\n</details>"
