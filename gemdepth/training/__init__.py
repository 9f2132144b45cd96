"""Training: the LightningModule (:class:`GemDepthTask`), its helpers and the LightningCLI entry point."""

from gemdepth.training.task import GemDepthTask

__all__ = ["GemDepthTask"]
