"""PtychoPINN (PyTorch): physics-informed neural-network ptychography engine and ptychodus plugin."""

__version__ = "0.1.0"
