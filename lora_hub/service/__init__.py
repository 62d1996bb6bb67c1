"""``lorahub serve``: the core API over HTTP (FastAPI). ``create_app`` builds the ASGI app;
``lora_hub.service.app`` documents the routes, ``lora_hub.service.auth`` the tokens."""

from lora_hub.service.app import create_app, serving_app

__all__ = ["create_app", "serving_app"]
