"""Orchestration behind ``lora_hub.api.Hub`` that touches the catalog and the store."""
