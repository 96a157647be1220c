"""Errors that stand for bad input rather than a bug in the project."""


class PipelineError(Exception):
    """Bad input to a stage: a params value, a data file, a download.

    Stages turn it into a one-line message and a non-zero exit; the message
    names the file or the params key at fault.
    """
