"""fedsim.learning."""
