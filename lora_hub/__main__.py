"""``python -m lora_hub`` runs the CLI."""

from lora_hub.cli.main import main

main()
