"""run: a merge-and-export pipeline from a YAML file."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, cast

import typer

from lora_hub.cli._common import ForceOpt, JsonOpt, OverwriteOpt, RichProgress, handle_errors, hub, print_json, say
from lora_hub.cli.export import print_export
from lora_hub.cli.hub import print_hub_export
from lora_hub.cli.jobs import DetachOpt, SubmitOpt, submitted
from lora_hub.cli.merge import print_merge

if TYPE_CHECKING:
    from lora_hub.api import PipelineResult


@handle_errors
def run(
    pipeline: Annotated[Path, typer.Argument(metavar="PIPELINE.yaml", help="The pipeline file.", show_default=False)],
    device: Annotated[
        str, typer.Option("--device", metavar="DEVICE", help="auto (cuda if present), cpu or cuda.")
    ] = "auto",
    recompute: Annotated[
        bool, typer.Option("--recompute", help="Do every step again even if its result is recorded.")
    ] = False,
    force: ForceOpt = False,
    overwrite: OverwriteOpt = False,
    submit: SubmitOpt = False,
    detach: DetachOpt = False,
    json: JsonOpt = False,
) -> None:
    """Run a pipeline: one merge, then an export of the merged model per format. Each step is
    served from its record when unchanged, so an unchanged pipeline runs again in seconds.

    \b
    A pipeline file (mergekit's fields, plus where results go; paths relative to the file):
      base_model: llama-3.2-1b          # a registered base or a model folder
      merge_method: ties                # default linear; see `lorahub methods`
      parameters: {density: 0.5}        # the method's parameters
      models:
        - model: acme/sql:3             # an adapter reference or folder
          parameters: {weight: 0.7}     # (or `weight: 0.7`)
        - model: acme/chat:1
          weight: 0.3
      dtype: auto                       # or bfloat16, float16, float32
      output: ./merged                  # left out: through a server, stored as base `name`
      name: acme/llama-sql-chat         # register the merged model as a base (optional)
      exports:
        - format: onnx                  # output default: <output>-<format>
        - {format: torch-export, with_cache: true, max_seq: 256, output: ./merged-pt2}
      push: {repo_id: acme/llama-sql-chat, create: true}   # then to the HF Hub (needs name)

    \b
    Examples:
      lorahub run merge.yaml
      lorahub run merge.yaml --recompute --force
    """
    if submit or detach:
        job = hub().submit_pipeline(pipeline, device=device, recompute=recompute, force=force, overwrite=overwrite)
        done = submitted(job, detach=detach, json=json)
        if done is None:
            return
        result = cast("PipelineResult", done)
    else:
        result = hub().run_pipeline(pipeline, device=device, recompute=recompute, force=force, overwrite=overwrite,
                                    progress=RichProgress(not json))  # fmt: skip
    if json:
        print_json(result)
        return
    print_merge(result.merge)
    for exported in result.exports:
        print_export(result.merge.registered or result.merge.path, exported)
    if result.pushed is not None:
        print_hub_export(result.pushed)
    if not result.work_done:
        say("nothing to do: every step was served from its record (--recompute does them again)")
