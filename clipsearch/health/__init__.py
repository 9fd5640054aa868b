"""Library health: duplicates, near-duplicates and bursts found from what the index holds."""
