"""Docker: its Engine API, images copied out of and loaded into its stores, its daemon and refs."""
