"""Errors a user can act on. Every entry point prints these as one clear line and exits non-zero."""


class FinetuneError(Exception):
    """Base class: the message names the file, key or value at fault and, where possible, the fix."""


class DataError(FinetuneError):
    """The dataset (folder, CSV manifest, image files, Fashion-MNIST files) is unusable."""


class DamagedFile(DataError, ValueError):
    """A file that should hold JSON does not (cut short, edited by hand). A ValueError too, as json's own error
    is, so code that reads a file of its own and handles ValueError still does."""


class WeightsError(FinetuneError):
    """Pretrained weights could not be fetched, verified or loaded."""


class ConfigError(FinetuneError):
    """A configuration value is missing or invalid."""


class TrainingError(FinetuneError):
    """Training cannot continue (non-finite loss, out of memory, interrupted)."""


class Diverged(TrainingError):
    """The training or validation loss became non-finite; ``what`` says where (``loss became nan at epoch 2,
    step 5``)."""

    def __init__(self, message: str, what: str):
        super().__init__(message)
        self.what = what


class WriteError(FinetuneError):
    """A result could not be written (disk full, file size limit, read-only file system).

    Results are written beside their destination and renamed onto it only when complete, so the
    previous version of the file, if any, is still there, unchanged.
    """


# How a training process that stops because another one was signalled names its stop (finetune.stopping; the
# launcher, finetune.launch, prefers a process's own signal when it says why the job stopped).
OTHER_RANKS_SIGNAL = "a signal to another training process"


class StopRequested(BaseException):
    """SIGTERM/SIGINT arrived: Slurm's warning before a walltime kill, or Ctrl-C.

    Not a FinetuneError: the entry points exit with 143 (128 + SIGTERM) so that schedulers see a
    stopped job, not a broken one. The message says what was kept. A BaseException, as KeyboardInterrupt:
    the ``except Exception`` that takes a file torch cannot read for a damaged one (the resume state, the
    feature cache, the weights) must not take a stop arriving during the read for one too.
    """
