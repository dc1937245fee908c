"""Where the settings used to live; kept so `from linstudio.settings import ...` goes on working.

The settings moved to the ground floor, `linstudio_settings`, so the rooms below the command line
can stand on them without reaching up into it (docs/architecture.md).
"""

from linstudio_settings import Settings, get_settings

__all__ = ["Settings", "get_settings"]
