"""Hugging Face Hub sync: the client (``client``: every call to ``huggingface_hub``, with lora-hub's
errors), model cards (``card``) and result types (``types``). The capability itself, working on a
``Context``, is ``lora_hub.core.hubsync``. Nothing here touches the catalog or the blob store."""
