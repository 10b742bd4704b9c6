"""Thin shim so `python cli.py ...` works from a checkout; the CLI lives in simengine.cli."""

from simengine.cli import main

if __name__ == "__main__":
    main()
