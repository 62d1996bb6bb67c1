"""Choosing the rank: the spectra of LoRA updates (``spectrum``), truncation to a smaller rank
(``reduce``) and LoRA extraction from a dense fine-tune (``extract``). Pure functions over tensors
and file paths; ``lora_hub.core.ranking`` connects them to the catalog and the store."""
