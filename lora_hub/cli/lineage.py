"""lineage."""

from __future__ import annotations

from typing import Annotated

import typer

from lora_hub.cli._common import JsonOpt, handle_errors, hub, print_json, say
from lora_hub.types import LineageNode


@handle_errors
def lineage(
    ref: Annotated[
        str, typer.Argument(metavar="REF", help="Adapter reference, or a registered base's name.", show_default=False)
    ],
    json: JsonOpt = False,
) -> None:
    """Show what was made from an adapter version or a base: adapters combined, reduced or
    extracted from it, merges that used it, their exports, and merges built on those.

    \b
    Examples:
      lorahub lineage acme/sql-lora:3
      lorahub lineage llama-3.2-1b --json
    """
    root = hub().lineage(ref)
    if json:
        print_json(root)
        return
    say(_line(root))
    _children(root, "")


def _line(node: LineageNode) -> str:
    digest = f"  {node.digest}" if node.digest and node.kind == "adapter" else ""
    where = f"  {node.path}" if node.path and node.path != node.label else ""
    head = f"{node.how} -> " if node.how else ""
    return f"{head}{node.label}{digest}{where}"


def _children(node: LineageNode, indent: str) -> None:
    for i, child in enumerate(node.children):
        last = i == len(node.children) - 1
        say(f"{indent}{'`- ' if last else '|- '}{_line(child)}")
        _children(child, indent + ("   " if last else "|  "))
    if not node.children and not indent:
        say("  (nothing recorded was made from it)")
