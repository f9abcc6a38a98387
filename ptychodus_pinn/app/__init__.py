"""The applications on top of the engine: command line, demo, figures and output files."""
