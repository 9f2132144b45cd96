"""Plug-ins that act on a host's features: GEM (camera-aware embeddings) and ASTT.

Importing this package registers them in :data:`gemdepth.models.registry.PLUGINS`.
"""

from gemdepth.models.plugins.astt import ASTT
from gemdepth.models.plugins.base import PLUGIN_POSITIONS, PlugIn
from gemdepth.models.plugins.gem import GEM

__all__ = ["ASTT", "GEM", "PLUGIN_POSITIONS", "PlugIn"]
