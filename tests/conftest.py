"""Shared by every test folder: this folder is on ``sys.path`` (pytest's rootdir
conftest), so tests import the helpers ``wire_fixtures`` and
``engine_references`` by name."""
