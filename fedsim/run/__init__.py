"""fedsim.run."""
