"""Sub-commands of ``ember`` beyond demo/inspect, one module each (see ember/cli.py)."""
