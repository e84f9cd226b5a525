"""Errors raised by the offline training side and the bundle format.

    ModelError                 base: anything a user of model/ should catch
    ├── DataError              a labeled file cannot be used (bad rows, missing fields)
    ├── TokenizerError         a tokenizer cannot be trained, read or used with the model
    ├── CheckpointError        a checkpoint (pretrained, or ours to resume) does not fit
    └── BundleError            a bundle is missing, tampered with, or inconsistent
        └── ParityError        the compiled model disagrees with the eager one at export
"""


class ModelError(Exception):
    """Base class for errors of the offline side."""


class DataError(ModelError):
    """A labeled data file cannot be used as asked."""


class TokenizerError(ModelError):
    """A tokenizer cannot be trained, read, or used with this model."""


class CheckpointError(ModelError):
    """A checkpoint (pretrained, or a training checkpoint to resume) is unusable or does not fit."""


class BundleError(ModelError):
    """A model bundle cannot be written, verified or loaded."""


class ParityError(BundleError):
    """The compiled model's outputs differ from the eager model's beyond tolerance."""
