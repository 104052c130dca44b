"""The errors align_face raises for a bad photo or argument: all AlignError, all with a readable message."""


class AlignError(ValueError):
    """Base class of every error align_face raises for a bad photo or argument."""


class InvalidImageError(AlignError):
    """The input is not a readable image (empty, truncated, corrupt, not an image, a format we do not read)."""


class ImageTooLargeError(AlignError):
    """The image has more pixels than MAX_PIXELS (possible decompression bomb)."""


class NoFaceError(AlignError):
    """The landmarker found no face."""


class FaceIndexError(AlignError, IndexError):
    """face_index is outside the faces found."""
