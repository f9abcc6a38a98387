"""ptychodus adapter: the "PtychoPINN (PyTorch)" reconstructor library and its activation.

Imports ``ptychodus.api`` (never PyQt5); the Qt panel lives in :mod:`ptychodus_pinn.qt`.
Nothing is imported here eagerly, so the entry point and the shim stay cheap.
"""
