"""norn: a real-time WebSocket event hub and its command-line clients."""

__all__ = ["__version__"]

__version__ = "0.1.0"
