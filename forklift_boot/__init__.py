"""forklift-boot: an offline container-image cache for Forklift devices."""

__version__ = "0.1.0"
