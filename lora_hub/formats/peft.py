"""PEFT adapter folders: ``adapter_config.json`` + ``adapter_model.safetensors``.

Tensor keys, as ``PeftModel.save_pretrained`` writes them (``<path>`` is the module's name in the
base model, e.g. ``model.layers.0.self_attn.q_proj``)::

    base_model.model.<path>.lora_A.weight          [r, in]      (Linear; Conv: [r, in, kh, kw])
    base_model.model.<path>.lora_B.weight          [out, r]
    base_model.model.<path>.lora_B.bias            [out]        (lora_bias=True)
    base_model.model.<path>.lora_embedding_A       [r, vocab]   (Embedding targets)
    base_model.model.<path>.lora_embedding_B       [dim, r]
    base_model.model.<path>.lora_magnitude_vector  [out]        (DoRA)
    base_model.model.<module>.<param>              full tensor  (modules_to_save, bias="all")

The config and the tensors are read independently and checked against each other; every
problem found is reported at once.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Container
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lora_hub.errors import InvalidAdapterError, PathError, PickleRefusedError
from lora_hub.formats.dtypes import FLOAT_DTYPES, NAME
from lora_hub.formats.files import list_folder
from lora_hub.formats.safetensors_file import (
    PICKLE_HINT,
    SafetensorsHeader,
    TensorInfo,
    nonfinite_tensors,
    read_header,
)
from lora_hub.types import AdapterFacts, AdapterLayout, LoraModule, SavedTensor

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
# PEFT writes configs of one or two kB; a config past this is damaged or hostile, not an adapter's.
MAX_CONFIG_BYTES = 1 << 20
KEY_PREFIX = "base_model.model."
PICKLE_SUFFIXES = frozenset({".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle"})


_LORA_KEY = re.compile(
    r"^(?P<path>.+)\.(?P<part>lora_A\.weight|lora_B\.weight|lora_B\.bias|lora_embedding_A|lora_embedding_B"
    r"|lora_magnitude_vector(?:\.weight)?)$"
)
_NAMED_ADAPTER_KEY = re.compile(r"\.lora_(?:A|B|embedding_A|embedding_B|magnitude_vector)\.[A-Za-z_][\w-]*\.")


@dataclass(frozen=True)
class ParseProblem:
    """A disagreement between an adapter's config and its tensors."""

    message: str
    code: str = "adapter"  # or "rank", "dora_magnitude" (compat.Problem codes)
    module: str | None = None
    expected: str | None = None
    found: str | None = None

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class AdapterDir:
    """A PEFT adapter folder, read and checked. ``files`` maps relative POSIX paths to real paths.
    ``warnings`` are things that are valid but probably not what the user meant (``lora_alpha`` 0)."""

    root: Path
    config: dict[str, Any]
    header: SafetensorsHeader
    facts: AdapterFacts
    layout: AdapterLayout
    files: dict[str, Path]
    problems: tuple[ParseProblem, ...] = ()
    warnings: tuple[str, ...] = ()


def lora_keys(module: str, *, embedding: bool = False) -> tuple[str, str]:
    """The file keys of a module's A and B factors (``lora_embedding_A``/``B`` for embeddings)."""
    if embedding:
        return f"{KEY_PREFIX}{module}.lora_embedding_A", f"{KEY_PREFIX}{module}.lora_embedding_B"
    return f"{KEY_PREFIX}{module}.lora_A.weight", f"{KEY_PREFIX}{module}.lora_B.weight"


def find_lora_keys(module: str, keys: Container[str]) -> tuple[str, str]:
    """A module's factor keys as a file holds them (linear or embedding layout)."""
    linear = lora_keys(module)
    return linear if linear[0] in keys else lora_keys(module, embedding=True)


def magnitude_key(module: str, keys: Container[str]) -> str:
    """The key of a DoRA magnitude vector as a file holds it (PEFT wrote both spellings)."""
    key = f"{KEY_PREFIX}{module}.lora_magnitude_vector"
    return key if key in keys else key + ".weight"


def bias_key(module: str) -> str:
    """The key of a module's LoRA bias (``lora_bias=True``)."""
    return f"{KEY_PREFIX}{module}.lora_B.bias"


def saved_key(name: str) -> str:
    """The usual key of a saved full tensor (``modules_to_save``) replacing the base tensor ``name``."""
    return KEY_PREFIX + name


def pattern_key(patterns: dict[str, Any], module_path: str) -> str | None:
    """The first key of ``rank_pattern``/``alpha_pattern`` that names ``module_path``.

    PEFT's rule (``peft.utils.other.get_pattern_key``): key ``k`` matches when the module path
    matches the regex ``(.*\\.)?(k)$``.
    """
    for key in patterns:
        try:
            if re.match(rf"(.*\.)?({key})$", module_path):
                return key
        except re.error as exc:
            raise InvalidAdapterError(f"rank/alpha pattern {key!r} is not a valid regular expression: {exc}") from exc
    return None


def lora_scale(alpha: float, rank: int, use_rslora: bool) -> float:
    """``alpha / rank``, or ``alpha / sqrt(rank)`` with rsLoRA (Kalajdzievski 2023)."""
    return alpha / math.sqrt(rank) if use_rslora else alpha / rank


def _model_type(config: dict[str, Any]) -> str | None:
    """PEFT records ``auto_mapping.parent_library``, e.g. ``transformers.models.llama.modeling_llama``."""
    mapping = config.get("auto_mapping")
    if isinstance(mapping, dict):
        m = re.match(r"transformers\.models\.([a-z0-9_]+)\.", str(mapping.get("parent_library") or ""))
        if m:
            return m.group(1)
    return None


def list_files(root: Path) -> dict[str, Path]:
    """Every regular file under ``root`` by relative path, by the rule of ``formats.files``
    (hidden entries skipped; links must stay inside the folder; no loops, special files or
    unprintable names). Pickle files are refused here, before anything else is read."""
    listing = list_folder(root)
    if listing.problems:
        raise InvalidAdapterError(
            listing.summary(),
            path=str(root),
            hint="copy the files that links point to into the folder (or remove the links), then push again",
        )
    for rel in listing.files:
        if Path(rel).suffix.lower() in PICKLE_SUFFIXES:
            raise PickleRefusedError(
                f"{rel} is a pickle file; only safetensors are accepted", path=str(root), hint=PICKLE_HINT
            )
    return listing.files


def read_json_file(path: Path, limit: int, error: type[PathError] = InvalidAdapterError) -> Any:
    """The JSON document in ``path``, refused (as ``error``) past ``limit`` bytes, when not UTF-8,
    not JSON, or nested too deep to parse."""
    try:
        size = path.stat().st_size
        if size > limit:
            raise error(f"is {size:,} bytes, over the {limit:,}-byte limit for this file", path=str(path))
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error("is not UTF-8 text", path=str(path)) from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}", path=str(path)) from exc
    except RecursionError as exc:
        raise error("is not acceptable JSON: nested too deeply", path=str(path)) from exc
    except ValueError as exc:  # e.g. an integer of thousands of digits
        raise error(f"is not acceptable JSON: {str(exc)[:100]}", path=str(path)) from exc


def _load_config(path: Path) -> dict[str, Any]:
    config = read_json_file(path, MAX_CONFIG_BYTES)
    if not isinstance(config, dict):
        raise InvalidAdapterError("must hold a JSON object", path=str(path))
    peft_type = config.get("peft_type")
    if peft_type is not None and str(peft_type).upper() != "LORA":
        raise InvalidAdapterError(f"is a {peft_type} adapter; lora-hub stores LoRA adapters only", path=str(path))
    problems = []
    missing = [k for k in ("r", "lora_alpha", "target_modules") if k not in config]
    if missing:
        problems.append(ParseProblem(f"missing required field(s): {', '.join(missing)}"))
    r = config.get("r")
    if "r" in config and (not isinstance(r, int) or isinstance(r, bool) or r < 1):
        problems.append(ParseProblem(f"'r' must be a positive integer, got {r!r}"))
    alpha = config.get("lora_alpha")
    if "lora_alpha" in config and (
        not isinstance(alpha, int | float) or isinstance(alpha, bool) or not math.isfinite(alpha)
    ):
        problems.append(ParseProblem(f"'lora_alpha' must be a finite number, got {alpha!r}"))
    for key, kind in (("rank_pattern", int), ("alpha_pattern", (int, float))):
        pat = config.get(key) or {}
        if not isinstance(pat, dict) or not all(
            isinstance(v, kind) and not isinstance(v, bool) and 0 < v < math.inf for v in pat.values()
        ):
            problems.append(ParseProblem(f"'{key}' must map module patterns to positive numbers"))
    for key in ("target_modules", "exclude_modules"):
        value = config.get(key)
        names_or_regex = isinstance(value, str) or (isinstance(value, list) and all(isinstance(t, str) for t in value))
        # target_modules is required (null is not LoRA on modules); exclude_modules may be null
        if ((key in config and key == "target_modules") or value is not None) and not names_or_regex:
            problems.append(ParseProblem(f"'{key}' must be a list of module names or a regular expression"))
    if problems:
        raise InvalidAdapterError("; ".join(map(str, problems)), path=str(path))
    return config


def read_adapter_dir(path: str | os.PathLike[str], *, check_finite: bool = True, strict: bool = True) -> AdapterDir:
    """Read a PEFT adapter folder and check it thoroughly, without torch and without unpickling.

    Raises ``InvalidAdapterError`` (or a subclass) naming every problem found. With
    ``strict=False``, disagreements between the config and the tensors (ranks, missing halves,
    DoRA sizes) are returned in ``problems`` instead, and the modules concerned are left out of
    the layout; an unreadable file still raises.
    """
    root = Path(path)
    if not root.exists():
        raise InvalidAdapterError("no such folder", path=str(root))
    if not root.is_dir():
        if root.name == WEIGHTS_NAME or root.suffix in PICKLE_SUFFIXES:
            raise InvalidAdapterError("is a file; give the adapter's folder (with adapter_config.json)", path=str(root))
        raise InvalidAdapterError("is not a folder", path=str(root))
    files = list_files(root)
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if n not in files]
    if missing:
        found = ", ".join(sorted(files)[:10]) or "nothing"
        raise InvalidAdapterError(
            f"not a PEFT adapter folder: {' and '.join(missing)} missing (found: {found})",
            path=str(root),
            hint="save it with PeftModel.save_pretrained(dir)",
        )
    config = _load_config(files[CONFIG_NAME])
    try:
        header = read_header(files[WEIGHTS_NAME])
    except InvalidAdapterError as exc:
        if exc.path is None:
            raise type(exc)(exc.message, path=str(files[WEIGHTS_NAME]), hint=exc.hint) from exc
        raise
    for rel, other in files.items():
        if rel != WEIGHTS_NAME and rel.lower().endswith(".safetensors"):
            try:  # every safetensors file stored must be as sound as the weights
                read_header(other)
            except InvalidAdapterError as exc:
                raise type(exc)(exc.message, path=str(other), hint=exc.hint) from exc
    facts, layout, problems = _facts(config, header, sum(p.stat().st_size for p in files.values()))
    problems.extend(target_problems(config, [m.path for m in layout.modules]))
    if problems and strict:
        raise InvalidAdapterError(
            f"{len(problems)} problem(s): "
            + "; ".join(map(str, problems[:20]))
            + (" ..." if len(problems) > 20 else ""),
            path=str(files[WEIGHTS_NAME]),
        )
    if check_finite:
        check_finite_tensors(header)
    warnings = []
    if facts.alpha <= 0:
        effect = "the adapter changes nothing when merged" if facts.alpha == 0 else "its updates are negated"
        warnings.append(f"lora_alpha is {facts.alpha:g}: {effect}")
    return AdapterDir(root, config, header, facts, layout, files, tuple(problems), tuple(warnings))


def check_finite_tensors(header: SafetensorsHeader, bad: list[str] | None = None) -> None:
    """Refuse an adapter file holding NaN or Inf (``bad``: the scan's result, if already made)."""
    bad = nonfinite_tensors(header) if bad is None else bad
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise InvalidAdapterError(
            f"NaN or Inf values in {', '.join(bad[:3])}{more}",
            path=str(header.path),
            hint="the training diverged or the file is damaged",
        )


def _targets(config: dict[str, Any], key: str) -> str | list[str] | None:
    value = config.get(key)
    return value if isinstance(value, str | list) else None


def selects(spec: str | list[str], path: str) -> bool:
    """Whether PEFT's ``target_modules``-style ``spec`` selects the module ``path``
    (``peft.tuners.tuners_utils.check_target_module_exists``): a string is a regular expression
    matched against the whole path (``all-linear`` selects every linear layer); a list selects
    a path equal to an entry or ending with ``.<entry>``."""
    if isinstance(spec, str):
        return spec == "all-linear" or re.fullmatch(spec, path) is not None
    return path in spec or any(path.endswith(f".{t}") for t in spec)


def target_problems(config: dict[str, Any], module_paths: list[str]) -> list[ParseProblem]:
    """Disagreements between the config's ``target_modules`` / ``exclude_modules`` and the modules
    that hold weights, judged as PEFT loads the adapter: PEFT puts LoRA layers where the config
    says and loads the weights that match them, so weights of a module the config does not select
    are silently dropped, and a selected module without weights stays untrained."""
    targets, excluded = _targets(config, "target_modules"), _targets(config, "exclude_modules")
    if targets is None:
        return []
    if targets == []:
        return [ParseProblem("'target_modules' is empty: PEFT refuses such a config", code="target_modules")]
    bad = []
    for key, spec in (("target_modules", targets), ("exclude_modules", excluded)):
        if isinstance(spec, str) and spec != "all-linear":
            try:
                re.compile(spec)
            except re.error as exc:
                bad.append(
                    ParseProblem(f"{key} {spec[:80]!r} is not a valid regular expression: {exc}", code="target_modules")
                )
    if bad:
        return bad
    problems = []
    unselected = [p for p in module_paths if not selects(targets, p)]
    if unselected:
        problems.append(
            ParseProblem(
                f"the weights hold {len(unselected)} module(s) that target_modules {targets!r} does not select "
                f"(PEFT would drop their weights): {', '.join(unselected[:5])}"
                + (" ..." if len(unselected) > 5 else ""),
                code="target_modules",
            )
        )
    if excluded:
        dropped = [p for p in module_paths if selects(excluded, p)]
        if dropped:
            problems.append(
                ParseProblem(
                    f"exclude_modules {excluded!r} excludes {', '.join(dropped[:5])}, which hold weights",
                    code="target_modules",
                )
            )
    if isinstance(targets, list) and module_paths:
        empty = [t for t in targets if not any(p == t or p.endswith(f".{t}") for p in module_paths)]
        if empty:
            problems.append(
                ParseProblem(
                    f"target_modules names {', '.join(map(repr, empty))}, but the weights hold no such module "
                    "(PEFT would add it untrained)",
                    code="target_modules",
                )
            )
    return problems


@dataclass(frozen=True)
class _Settings:
    """What the config says about every module: ranks and alphas (with their patterns), rsLoRA, DoRA."""

    rank: int
    alpha: float
    rank_pattern: dict[str, int]
    alpha_pattern: dict[str, float]
    use_rslora: bool
    use_dora: bool

    @classmethod
    def of(cls, config: dict[str, Any]) -> _Settings:
        return cls(
            rank=int(config["r"]),
            alpha=float(config["lora_alpha"]),
            rank_pattern={k: int(v) for k, v in (config.get("rank_pattern") or {}).items()},
            alpha_pattern={k: float(v) for k, v in (config.get("alpha_pattern") or {}).items()},
            use_rslora=bool(config.get("use_rslora", False)),
            use_dora=bool(config.get("use_dora", False)),
        )


def _group_tensors(
    header: SafetensorsHeader,
) -> tuple[dict[str, dict[str, TensorInfo]], dict[str, SavedTensor], list[ParseProblem]]:
    """The file's LoRA tensors by module path and part (``lora_A.weight``, ...), its saved full
    tensors by the name of the base tensor they replace, and the keys that are not PEFT's."""
    parts: dict[str, dict[str, TensorInfo]] = {}
    saved: dict[str, SavedTensor] = {}
    problems: list[ParseProblem] = []
    for t in header:
        if not t.name.startswith(KEY_PREFIX):
            problems.append(
                ParseProblem(f"key {t.name!r} does not start with {KEY_PREFIX!r} (not a PEFT adapter file?)")
            )
            continue
        if _NAMED_ADAPTER_KEY.search(t.name):
            problems.append(
                ParseProblem(f"key {t.name!r} carries an adapter name; save with PeftModel.save_pretrained")
            )
            continue
        key = t.name[len(KEY_PREFIX) :]
        m = _LORA_KEY.match(key)
        if m:
            part = m["part"].removesuffix(".weight") if m["part"].startswith("lora_magnitude") else m["part"]
            parts.setdefault(m["path"], {})[part] = t
        elif ".original_module." not in key:  # PEFT's copy of the untouched base module: not an update
            # PEFT may save wrapped modules as <path>.modules_to_save.weight / <path>.base_layer.weight.
            name = key.replace(".modules_to_save.", ".").replace(".base_layer.", ".")
            if name not in saved or name != key:
                saved[name] = SavedTensor(
                    name=name,
                    key=None if name == key else t.name,
                    dtype=NAME.get(t.dtype, t.dtype),
                    shape=list(t.shape),
                    base_layer=".base_layer." in key,
                )
        if t.dtype not in FLOAT_DTYPES:
            problems.append(
                ParseProblem(f"{t.name} has dtype {t.dtype}; adapter weights must be F32, F16, BF16 or F64")
            )
    return parts, saved, problems


def _read_module(path: str, p: dict[str, TensorInfo], cfg: _Settings) -> tuple[LoraModule | None, list[ParseProblem]]:
    """One module from its tensors: rank and alpha (patterns applied) checked against the shapes,
    DoRA magnitudes and LoRA biases against the outputs. ``None`` when it cannot be read."""
    problems: list[ParseProblem] = []
    embedding = "lora_embedding_A" in p or "lora_embedding_B" in p
    a = p.get("lora_embedding_A" if embedding else "lora_A.weight")
    b = p.get("lora_embedding_B" if embedding else "lora_B.weight")
    a_name, b_name = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A", "lora_B")
    if a is None and b is None:
        return None, [ParseProblem(f"{path} has {', '.join(sorted(p))} but neither {a_name} nor {b_name}")]
    if a is None or b is None:
        have, lack = (a_name, b_name) if b is None else (b_name, a_name)
        return None, [ParseProblem(f"{path} has {have} but no {lack}")]
    rkey = pattern_key(cfg.rank_pattern, path)
    rank = cfg.rank_pattern[rkey] if rkey is not None else cfg.rank
    akey = pattern_key(cfg.alpha_pattern, path)
    alpha = cfg.alpha_pattern[akey] if akey is not None else cfg.alpha
    if len(a.shape) < 2 or len(b.shape) < 2:
        return None, [
            ParseProblem(f"{path}: {a_name} {list(a.shape)} and {b_name} {list(b.shape)} must be at least 2-D")
        ]
    if a.shape[0] != rank or b.shape[1] != rank:
        source = f"rank_pattern[{rkey!r}]" if rkey is not None else "r"
        found = str(a.shape[0]) if a.shape[0] == b.shape[1] else f"{a.shape[0]} (A) / {b.shape[1]} (B)"
        message = (
            f"{path}: the config says rank {rank} ({source}) but {a_name} is {list(a.shape)} and "
            f"{b_name} is {list(b.shape)}"
        )
        return None, [ParseProblem(message, code="rank", module=path, expected=str(rank), found=found)]
    magnitude = p.get("lora_magnitude_vector")
    out_features = b.shape[0]
    if magnitude is not None:
        if not cfg.use_dora:
            problems.append(ParseProblem(f"{path} has a DoRA magnitude vector but the config has use_dora=false"))
        elif magnitude.numel != out_features:
            problems.append(
                ParseProblem(
                    f"{path}: DoRA magnitude vector has {magnitude.numel} entries, lora_B has {out_features} outputs",
                    code="dora_magnitude",
                    module=path,
                    expected=str(out_features),
                    found=str(magnitude.numel),
                )
            )
    elif cfg.use_dora and not embedding:
        problems.append(ParseProblem(f"{path}: use_dora=true but there is no lora_magnitude_vector"))
    bias = p.get("lora_B.bias")
    if bias is not None and bias.shape != (out_features,):
        problems.append(ParseProblem(f"{path}: lora_B.bias is {list(bias.shape)}, expected [{out_features}]"))
    kind: Literal["linear", "embedding", "conv"] = (
        "embedding" if embedding else ("conv" if len(a.shape) > 2 else "linear")
    )
    module = LoraModule(
        path=path,
        kind=kind,
        rank=rank,
        alpha=alpha,
        scale=lora_scale(alpha, rank, cfg.use_rslora),
        in_features=a.shape[1],
        out_features=out_features,
        a_shape=list(a.shape),
        b_shape=list(b.shape),
        dora=magnitude is not None,
        bias=bias is not None,
    )
    return module, problems


def _facts(
    config: dict[str, Any], header: SafetensorsHeader, size_bytes: int
) -> tuple[AdapterFacts, AdapterLayout, list[ParseProblem]]:
    """The adapter's facts and layout from its checked config and header, with every disagreement."""
    parts, saved, problems = _group_tensors(header)
    cfg = _Settings.of(config)
    modules: list[LoraModule] = []
    for path in sorted(parts):
        module, found = _read_module(path, parts[path], cfg)
        problems += found
        if module is not None:
            modules.append(module)
    if not modules and not problems:
        problems.append(ParseProblem("no LoRA tensors (lora_A / lora_B) in the file"))

    dtypes = {t.dtype for t in header}
    dtype = NAME.get(next(iter(dtypes)), "other") if len(dtypes) == 1 else "mixed"
    mts = config.get("modules_to_save") or []
    facts = AdapterFacts(
        peft_type="LORA",
        rank=cfg.rank,
        alpha=cfg.alpha,
        use_rslora=cfg.use_rslora,
        use_dora=cfg.use_dora,
        fan_in_fan_out=bool(config.get("fan_in_fan_out", False)),
        lora_bias=any(m.bias for m in modules),
        bias=str(config.get("bias") or "none"),
        rank_pattern=cfg.rank_pattern,
        alpha_pattern=cfg.alpha_pattern,
        target_modules=sorted({m.path.rsplit(".", 1)[-1] for m in modules}),
        modules_to_save=list(mts) if isinstance(mts, list) else [str(mts)],
        dtype=dtype,
        num_params=sum(t.numel for t in header),
        size_bytes=size_bytes,
        task_type=config.get("task_type"),
        base_model_name_or_path=config.get("base_model_name_or_path"),
        revision=config.get("revision"),
        model_type=_model_type(config),
    )
    return facts, AdapterLayout(modules=modules, saved_tensors=list(saved.values())), problems


def write_adapter_dir(folder: Path, tensors: dict[str, Any], config: dict[str, Any]) -> Path:
    """Write a PEFT adapter folder (``adapter_model.safetensors`` from torch ``tensors`` keyed as
    PEFT saves them, ``adapter_config.json`` from ``config``) into the existing ``folder``."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / WEIGHTS_NAME), metadata={"format": "pt"})
    (folder / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    return folder
