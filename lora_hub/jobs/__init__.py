"""Jobs on workers, PostgreSQL only: procrastinate as the queue (``queue``), its schema in the
catalog's migrations (``schema``), and ``lorahub worker`` (``worker``). What a job is and does
lives in ``lora_hub.core.jobs``."""
