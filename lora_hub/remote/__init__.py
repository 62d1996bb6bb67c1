"""A client of a lorahub server: ``RemoteHub`` implements ``lora_hub.api.HubAPI`` over HTTP.
``lora_hub.api.open_hub`` returns one when ``LORAHUB_URL`` is set."""

from lora_hub.remote.client import RemoteHub, error_from
from lora_hub.remote.tokens import read_token, save_token

__all__ = ["RemoteHub", "error_from", "read_token", "save_token"]
