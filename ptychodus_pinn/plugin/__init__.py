"""ptychodus adapter: the "PtychoPINN (PyTorch)" reconstructor library and its activation.

Imports ``ptychodus.api`` (never PyQt5, never :mod:`ptychodus_pinn.qt`); the Qt panel and the entry
point that wires the two live in :mod:`ptychodus_pinn.qt`. Nothing is imported here eagerly, so the
entry point and the shim stay cheap.
"""
