"""Qt panel for ptychodus (the only PyQt5 importer) and the entry point that wires it to the library."""
