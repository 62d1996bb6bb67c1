"""``python -m lora_hub`` runs the CLI."""

from lora_hub.cli import main

main()
