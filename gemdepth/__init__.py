"""gemdepth: 3D-consistent video depth estimation (GemDepth) in PyTorch Lightning."""

__version__ = "0.1.0"
