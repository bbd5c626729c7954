"""Exception types whose messages are meant for the user (one line, with context).

The CLI catches :class:`PipelineError` at one boundary and prints its message; any
other exception is a bug and keeps its traceback.
"""


class PipelineError(Exception):
    """Base class: a user-facing failure with a readable one-line message."""


class ConfigError(PipelineError):
    """An invalid option, parameter value or combination of them."""


class ManifestError(PipelineError):
    """A manifest or dataset source that cannot be indexed or read."""


class DecodeError(PipelineError):
    """A video that cannot be opened or decoded."""


class WeightsError(PipelineError):
    """Backbone weights that cannot be obtained or do not match their fingerprint."""


class StoreError(PipelineError):
    """A feature store that cannot be opened, is locked, corrupt, or from another extractor."""


class ModelError(PipelineError):
    """A trained model directory that is missing files or incompatible."""


class ClusterError(PipelineError):
    """A Dask scheduler that cannot be reached, or a cluster that cannot run the tasks."""


class OutputError(ConfigError):
    """An output path that may not be written: taken by something else, the wrong kind, or
    in a location that cannot be written."""
