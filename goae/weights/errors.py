"""Every error about weights, in one place: finding them, checking a folder, reading an official checkpoint,
fetching one. Each message is one line that says what to do (goae.io.one_line shows it as is)."""
from __future__ import annotations


class WeightsNotFoundError(FileNotFoundError):
    """Model weights are not available locally and cannot be downloaded."""


class WeightsFolderError(ValueError):
    """A weights folder (config or safetensors file) is not one goae can load."""


class DomainMismatchWarning(UserWarning):
    """A pipeline folder's domain (model_index.json) is not the one its generator's camera pivot implies."""


# ----------------------------------------------------------------------------- reading official checkpoints


class CheckpointError(Exception):
    """A checkpoint file cannot be used (base class of all converter errors). path: the file, where the converter
    knows which one it is (goae.weights.convert.convert_goae sets it)."""

    path = None


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint path does not exist."""


class TruncatedCheckpointError(CheckpointError):
    """The file ends early (interrupted download or copy)."""


class WrongCheckpointError(CheckpointError):
    """The file is readable but is not the checkpoint that was expected."""


class StateDictMismatchError(WrongCheckpointError):
    """Keys or shapes of a state dict do not match the model."""


class UnsafePickleError(CheckpointError):
    """The pickle references code that an official checkpoint never contains."""


class OversizedCheckpointError(WrongCheckpointError):
    """The file describes far more data or structure than it holds (a pickle or zip bomb?)."""


class UnsupportedArchitectureError(WrongCheckpointError):
    """The network is not an EG3D generator that goae can build (other class, kwargs out of range)."""


class NonFiniteWeightsError(CheckpointError):
    """Weights hold NaN or Inf values."""


class DomainMismatchError(CheckpointError):
    """The generator's camera pivot says another domain than the one asked for (or assumed)."""


# ----------------------------------------------------------------------------- fetching


class DownloadError(Exception):
    """Weights could not be fetched or converted; the message says what to do (base class).

    status: the HTTP status that ended it, if any; transient: a retry may succeed (no answer, a dropped or
    refused connection, a 5xx), which is what the retry loop and the mirror's optional files decide by."""

    def __init__(self, message: str, *, status: int | None = None, transient: bool = False):
        super().__init__(message)
        self.status, self.transient = status, transient


class LicenceNotAcceptedError(DownloadError):
    """The licences were not accepted; nothing was downloaded."""


class DownloadInterruptedError(DownloadError):
    """A transfer stopped early; the bytes so far are kept in <name>.part and the next run resumes."""


class CorruptDownloadError(DownloadError):
    """A file has wrong bytes (checksum, size or content); it was discarded or moved aside."""


class ManualDownloadRequiredError(DownloadError):
    """The host (Google Drive) would not hand out the file; the message says how to fetch it by hand."""
