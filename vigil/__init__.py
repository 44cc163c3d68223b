"""Vigil: a high-availability cluster manager."""

__version__ = "0.1.0"
