"""Real-component test bed: a loopback docker-registry, private dockerd instances and test images.

Used by ``tests/integration/conftest.py``; docs/testbed.md says what it relies on.
"""
