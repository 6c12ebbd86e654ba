"""The one error type for a bad option value, shared by the converter and the runs."""
from __future__ import annotations


class ConfigError(ValueError):
    """A bad option value, found while checking a config before any work starts; the message
    names the key (conf/convert.yaml keys and phantom parameters for the converter, the run's
    keys and detectron2 deltas for a run).

    The CLIs print it as a config error (exit 2). It is a ValueError so that callers of the
    Python API that catch ValueError for bad options keep working; any other ValueError raised
    during the work is a fault, not a bad option, and is not reported as one.
    """
