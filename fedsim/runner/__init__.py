"""fedsim.runner: a run from options to its folder (options, lifecycle, folders, checkpoint)."""
