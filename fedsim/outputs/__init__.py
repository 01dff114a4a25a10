"""fedsim.outputs."""
