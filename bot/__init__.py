"""Tocsin: one outage declaration, the right statement for every audience, tracked."""

__version__ = "0.1.0"
