"""Typed errors. Every error a user can cause says what went wrong and what to do about it."""


class StereoDSCError(Exception):
    """Base class of every error stereodsc raises on purpose."""


class ConfigError(StereoDSCError, ValueError):
    """A configuration file or option is wrong; the message names the key and the fix."""


class DataError(StereoDSCError, ValueError):
    """Input data (images, pairs, datasets) is missing, unreadable or has the wrong shape."""


class CheckpointError(StereoDSCError):
    """A checkpoint is missing, corrupt, or of an incompatible schema."""


class CalibrationError(StereoDSCError):
    """Calibration could not be computed or a rig file is invalid."""


class BitstreamError(StereoDSCError, ValueError):
    """A bitstream or wire frame is corrupt, truncated, oversized or foreign."""


class BundleError(StereoDSCError):
    """A model bundle is missing files, was modified after export, or does not match the frames."""


class TrainingDivergedError(StereoDSCError):
    """The training loss became NaN or infinite; the last checkpoint on disk is still good."""
