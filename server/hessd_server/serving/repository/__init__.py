"""The model repository: the folder scanner, ``config.toml``, confined file reads,
the loader that loads, swaps and unloads versions, and the registry of served
versions. Free of gRPC (``tests/test_layout.py``)."""
