"""Trust measured: the multi-hop pointer-chasing task family, its statistics and its tables (pure: no torch)."""
