"""containerd: images copied out of and loaded into its content store, through ``ctr``."""
