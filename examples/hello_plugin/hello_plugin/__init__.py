"""An example third-party Caredeck plugin."""

__version__ = "1.0.0"
