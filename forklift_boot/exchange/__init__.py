"""The cache as an exchange medium: served as a registry, copied, merged, pushed, exported."""
