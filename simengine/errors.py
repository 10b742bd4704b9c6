"""Exceptions that the CLI turns into one-line messages and a non-zero exit code."""


class SimengineError(Exception):
    """A user-facing error: bad input, missing or mismatched artifacts."""


class ImageLoadError(SimengineError):
    """An image could not be read or decoded."""


class UnsupportedImageError(ImageLoadError):
    """The bytes are not an image in one of the formats accepted there (uploads to the service)."""


class ModelChangedError(SimengineError):
    """The index moved to another model between embedding a query image and answering; asking again works."""


class IndexUnusableError(SimengineError):
    """An index is missing, corrupt, or does not match its model."""


class NotCalibratedError(SimengineError):
    """A model bundle has no same-picture decision for `simengine dedup` (trained before it existed)."""


class BundleError(SimengineError):
    """A model bundle is missing, corrupt, or does not match its backbone."""


class IndexBusyError(SimengineError):
    """Another process is writing the index and did not finish within the timeout."""
