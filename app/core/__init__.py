"""The core the API and the workers share: settings, database, storage, backbones, job plans, the queue.

Nothing here imports the HTTP layer (``app.api``, fastapi, starlette) or ``worker``; both of those import
this package. See docs/architecture.md for the layers and tests/test_layers.py for the rules.
"""
