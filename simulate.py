"""fedsim's entry point: `python simulate.py --help`."""

from fedsim.front.cli import entry

if __name__ == "__main__":
    entry()
