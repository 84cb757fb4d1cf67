"""dgfs core: the deltaglider-compatible delta store, S3 access, codec, cache and stats.

Nothing in this package knows about FUSE.
"""

__version__ = "0.1.0"
TOOL_NAME = f"dgfs/{__version__}"
