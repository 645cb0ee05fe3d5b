"""Errors a user can act on. Every entry point prints these as one clear line and exits non-zero."""


class FinetuneError(Exception):
    """Base class: the message names the file, key or value at fault and, where possible, the fix."""


class DataError(FinetuneError):
    """The dataset (folder, CSV manifest, image files, Fashion-MNIST files) is unusable."""


class WeightsError(FinetuneError):
    """Pretrained weights could not be fetched, verified or loaded."""


class ConfigError(FinetuneError):
    """A configuration value is missing or invalid."""


class TrainingError(FinetuneError):
    """Training cannot continue (non-finite loss, out of memory, interrupted)."""
