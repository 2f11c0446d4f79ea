"""The errors of `weights_convert`: every failure to read or convert a checkpoint is a `CheckpointError` (a ValueError).

    CheckpointError            the file is not a readable PyTorch checkpoint, or is corrupt / truncated
    ├── UnsafeCheckpointError  the pickle asks for something a state dict never needs (a global, an opcode)
    ├── LayoutError            the tensors do not form a torchvision ResNet-FPN Mask/Faster R-CNN state dict
    └── WeightsFileError       a converted `.npz` is not a minimaskrcnn weights file, or has another format version
"""


class CheckpointError(ValueError):
    """A checkpoint could not be read or converted. The message is one line, fit for a command-line error."""


class UnsafeCheckpointError(CheckpointError):
    """The checkpoint's pickle references a global or uses an opcode that a plain state dict never needs."""


class LayoutError(CheckpointError):
    """The state dict does not match the layout of the architecture; lists every offending key by name."""

    def __init__(self, message, *, missing=(), unexpected=(), mismatched=()):
        super().__init__(message)
        self.missing = list(missing)            # keys the architecture needs that the file lacks
        self.unexpected = list(unexpected)      # keys in the file the architecture does not have
        self.mismatched = list(mismatched)      # (key, expected shape, actual shape or dtype)


class WeightsFileError(CheckpointError):
    """A file given as converted weights is not a valid minimaskrcnn `.npz`."""
