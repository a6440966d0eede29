"""Registries: the OCI distribution API over requests, as an image source and a push target."""
