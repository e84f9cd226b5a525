"""The worker's integration tests share tests/conftest.py's fixtures: a real broker, fresh topics
and groups, tiny bundles and in-process workers (``tiny_bundle``, ``start_worker``)."""
