"""fedsim.ground."""
