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


EXCERPT_CHARS = 40
"""The most characters of a user's input an error line quotes."""


def excerpt(text: str, limit: int = EXCERPT_CHARS, *, quoted: bool = True) -> str:
    """``text`` as a short printable quote for a one-line message.

    Control characters, NUL and undecodable bytes are escaped (as :func:`repr` does), and
    anything past ``limit`` characters is cut with ``…``: a binary file given where text is
    expected never fills the terminal with its bytes. ``quoted=False`` leaves out the quotes
    (for names listed after a colon).
    """
    shown = repr(text[:limit])[1:-1] + ("…" if len(text) > limit else "")
    return f"'{shown}'" if quoted else shown
