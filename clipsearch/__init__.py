"""clipsearch: semantic photo search on small CPUs, with int8 ONNX CLIP towers and an SQLite cache."""
__version__ = "0.1.0"
