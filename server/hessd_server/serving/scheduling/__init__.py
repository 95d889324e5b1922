"""Scheduling: the dynamic batcher, the engine threads and their executor, and
admission (draining). Free of gRPC (``tests/test_layout.py``): a call's deadline
arrives as any object with ``time_remaining()``."""
