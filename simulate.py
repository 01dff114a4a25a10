"""fedsim's entry point: `python simulate.py --help`."""

from fedsim.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
