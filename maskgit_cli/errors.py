"""Errors a user can cause and fix. The CLI prints their message (one line) and exits 1."""


class MaskgitError(Exception):
    """Base class: a problem with the user's input, files or settings, not a bug. `details`:
    results worth keeping although the command failed (an FID computed before its statistics
    could not be saved); `--json` carries them beside the error."""

    def __init__(self, message: str, details: dict | None = None):
        super().__init__(message)
        self.details = details or {}


class ConfigError(MaskgitError):
    """A config file or --set override is invalid."""


class DataError(MaskgitError):
    """An image folder, mask or token file cannot be used."""


class CheckpointError(MaskgitError):
    """A checkpoint is missing, corrupt, or does not match what it is used with."""


class OutputExistsError(MaskgitError):
    """An output would be overwritten without --overwrite, or is not maskgit's to replace."""


class TrainingDiverged(MaskgitError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class WeightsNotFound(MaskgitError):
    """Pretrained weights (FID-Inception) are not available offline."""


class WeightsError(MaskgitError):
    """Pretrained weights (FID-Inception) are damaged, of another network, or fail verification."""
