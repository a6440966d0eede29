"""Docker: the Engine API, images copied out of and loaded into its stores, its daemon and reference store."""
