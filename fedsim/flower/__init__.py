"""fedsim.flower."""
