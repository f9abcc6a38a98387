"""Qt panel for ptychodus (the only PyQt5 importer)."""
