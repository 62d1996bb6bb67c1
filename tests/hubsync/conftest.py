"""The Hub sync tests use the loopback Hub (``hf_hub``, from ``tests/hubsim``), registered as a
plugin in ``tests/conftest.py``."""
