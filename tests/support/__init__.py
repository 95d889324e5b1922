"""Helpers shared by the test folders: test models and in-process servers
(``wire_fixtures``), independent derivative references (``engine_references``),
a test certificate authority (``tls_certificates``), the optimizer tests' models
(``optimize_models``, ``optimize_fixtures``) and the child process of the
reproducibility tests (``reproducibility_worker``).

``tests/`` is on ``sys.path`` (pytest's rootdir conftest), so tests import
``from support.wire_fixtures import serving``, and servers load these models as
``"support.wire_fixtures:<factory>"``; a child process needs ``tests/`` on its
``PYTHONPATH`` to load them.
"""
