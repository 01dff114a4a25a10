"""fedsim.simulation."""
