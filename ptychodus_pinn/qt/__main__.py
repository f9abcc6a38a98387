"""``python -m ptychodus_pinn.qt [ptychodus options]``: ptychodus with the plugin active (what ``ptychodus-pinn gui`` runs)."""

import sys

from ptychodus_pinn.qt.entry import run_gui

sys.exit(run_gui(sys.argv[1:]))
