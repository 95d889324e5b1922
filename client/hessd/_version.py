"""The one place hessd's version is written.

The build reads it (``pyproject.toml``: ``version = {attr = "hessd._version.__version__"}``),
``hessd.__version__`` and ``hessd_server.__version__`` re-export it, and the server reports
it in ``ListModelsResponse.server_version``. It moves with ``CHANGELOG.md``, whose latest
released section names the same version (checked by ``tests/test_version.py``).
"""

__version__ = "0.1.0"
