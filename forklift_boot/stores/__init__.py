"""The image stores forklift-boot copies from and loads into: Docker, containerd, registries."""
