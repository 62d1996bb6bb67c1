"""How adapters and bases are shown to a person (``show``, ``base show``)."""

from __future__ import annotations

from lora_hub.cli._common import human_bytes, human_count, say
from lora_hub.types import AdapterVersion, BaseModelInfo


def print_base(b: BaseModelInfo, all_tensors: bool) -> None:
    lines = [
        ("name", b.name or "-"),
        ("content", b.content_fingerprint),
        ("structure", b.structure_fingerprint),
        ("model_type", b.model_type or "-"),
        ("architectures", ", ".join(b.architectures) or "-"),
        ("dtype", b.dtype),
        ("params", f"{b.num_params:,} ({human_count(b.num_params)})"),
        ("tensors", str(b.num_tensors)),
        ("size", human_bytes(b.size_bytes)),
        ("path", (b.path or "-") + (f"  ({b.status})" if b.status and b.status != "ok" else "")),
        ("stored", "yes (blob store)" if b.stored else "no"),
        ("added", b.created_at.isoformat(timespec="seconds") if b.created_at else "-"),
    ]
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        say(f"{key:<{width}}  {value}")
    if b.lineage:
        recipe = b.lineage.get("recipe", {})
        report = b.lineage.get("report", {})
        say("lineage")
        say(f"  recipe        {b.lineage.get('recipe_digest')}")
        say(f"  base          {recipe.get('base_fingerprint')}")
        for a in recipe.get("adapters", []):
            say(f"  adapter       {a['ref']} @ {a['weight']:g}  {a['digest']}")
        say(f"  method        {recipe.get('method')}  dtype {recipe.get('dtype')}")
        versions = ", ".join(f"{k} {v}" for k, v in b.lineage.get("versions", {}).items())
        say(f"  versions      {versions}")
        worst = report.get("worst_error")
        if report.get("error_kind") == "fraction_of_bound":
            kinds = ["+".join(c) for c in report.get("checks", {}).values()]
            how = ", ".join(f"{k} {kinds.count(k)}" for k in sorted(set(kinds))) or "none changed"
            checked = f"tensors against a float64 recomputation ({how}), "
            error = f"worst error {100 * worst:.3g}% of its rounding bound" if worst is not None else ""
            unchecked = f", {len(report.get('not_verified', []))} NOT verified" if report.get("not_verified") else ""
        else:  # a record from before those checks: the probe's relative error
            checked, unchecked = "tensors by a probe, ", ""
            error = f"worst relative error {worst:.3g}" if worst is not None else ""
        say(
            f"  verification  {report.get('verified_tensors')} {checked}"
            + (f"{error} ({report.get('worst_tensor')})" if worst is not None else "nothing to compare")
            + unchecked
            + (", passed" if report.get("passed") else ", FAILED")
        )
    if b.exports:
        say("exports")
        for e in b.exports:
            parity = e.record.get("parity", {})
            worst = parity.get("worst_abs")
            check = f"parity max abs {worst:.3g}" if isinstance(worst, int | float) else "parity passed"
            created = e.created_at.isoformat(timespec="seconds") if e.created_at else "-"
            say(f"  {e.format}  {e.output_path}  {check}  {created}  key {e.key}")
    say("files")
    for f in b.files:
        say(f"  {f.path}  {human_bytes(f.size)}" + (f"  {f.digest}" if f.digest else ""))
    if all_tensors and b.tensors:
        say("tensors")
        for tname, t in b.tensors.items():
            say(f"  {tname}  {t.dtype}{t.shape}  {t.file}  {t.digest}")


def print_version(v: AdapterVersion) -> None:
    f = v.facts
    lines = [
        ("ref", v.ref),
        ("digest", v.digest),
        ("created", v.created_at.isoformat(timespec="seconds")),
        ("description", v.description or "-"),
        ("tags", ", ".join(v.tags) or "-"),
        ("metrics", ", ".join(f"{k}={val:g}" for k, val in v.metrics.items()) or "-"),
        ("rank", f"{f.rank}" + (f"  (pattern: {f.rank_pattern})" if f.rank_pattern else "")),
        ("alpha", f"{f.alpha:g}" + (f"  (pattern: {f.alpha_pattern})" if f.alpha_pattern else "")),
        ("targets", ", ".join(f.target_modules)),
        (
            "options",
            ", ".join(
                name
                for name, on in (
                    ("rslora", f.use_rslora),
                    ("dora", f.use_dora),
                    ("fan_in_fan_out", f.fan_in_fan_out),
                    ("lora_bias", f.lora_bias),
                )
                if on
            )
            or "-",
        ),
        ("modules_to_save", ", ".join(f.modules_to_save) or "-"),
        ("dtype", f.dtype),
        ("params", f"{f.num_params:,} ({human_count(f.num_params)})"),
        ("size", human_bytes(f.size_bytes)),
        ("task_type", f.task_type or "-"),
        ("base_model", (f.base_model_name_or_path or "-") + (f" @ {f.revision}" if f.revision else "")),
    ]
    if v.layout is not None:
        lines.append(("modules", f"{len(v.layout.modules)} LoRA modules, {len(v.layout.saved_tensors)} saved tensors"))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        say(f"{key:<{width}}  {value}")
    say("files")
    for entry in v.files:
        say(f"  {entry.path}  {human_bytes(entry.size)}  {entry.digest}")
