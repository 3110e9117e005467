"""DDIM diffusion over UI action sequences [x, y, press]."""

__version__ = "0.1.0"
