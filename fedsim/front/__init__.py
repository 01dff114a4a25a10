"""fedsim.front."""
