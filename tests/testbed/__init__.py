"""Real-component test bed: a loopback docker-registry, private dockerd instances and test images.

Used by ``tests/integration/conftest.py``; see /work/shared/TESTBED.md §1 for the measured behaviour.
"""
