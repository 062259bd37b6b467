"""The catalogue of domain errors.

Each error has a stable ``code`` (used by the CLI's exit messages, JSON output and, later,
the HTTP mapping in one place) and a one-line human message.
"""
from __future__ import annotations


class FaceSearchError(Exception):
    code: str = "error"
    http_status: int = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class InvalidInput(FaceSearchError):
    code = "invalid_input"
    http_status = 422


class NotAnImage(InvalidInput):
    code = "not_an_image"


class CorruptImage(InvalidInput):
    code = "corrupt_image"


class ImageTooLarge(InvalidInput):
    code = "image_too_large"
    http_status = 413


class NoFaceFound(InvalidInput):
    code = "no_face"


class FaceIndexOutOfRange(InvalidInput):
    code = "face_index_out_of_range"


class MissingLegalBasis(InvalidInput):
    code = "missing_legal_basis"


class MissingCaseInfo(InvalidInput):
    code = "missing_case_info"


class ManifestError(InvalidInput):
    code = "bad_manifest"


class NotFound(FaceSearchError):
    code = "not_found"
    http_status = 404


class GalleryNotFound(NotFound):
    code = "gallery_not_found"


class PathNotFound(NotFound):
    code = "path_not_found"


class ModelError(FaceSearchError):
    code = "model_error"
    http_status = 500


class ModelFileMissing(ModelError):
    code = "model_file_missing"


class ModelFileMismatch(ModelError):
    code = "model_file_mismatch"


class ModelMismatch(FaceSearchError):
    code = "model_mismatch"
    http_status = 409


class IndexError_(FaceSearchError):
    code = "index_error"


ALL_ERRORS: tuple[type[FaceSearchError], ...] = (
    FaceSearchError, InvalidInput, NotAnImage, CorruptImage, ImageTooLarge, NoFaceFound,
    FaceIndexOutOfRange, MissingLegalBasis, MissingCaseInfo, ManifestError, NotFound,
    GalleryNotFound, PathNotFound, ModelError, ModelFileMissing, ModelFileMismatch,
    ModelMismatch, IndexError_,
)



class ModelLicenseNotAccepted(ModelError):
    code = "model_license_not_accepted"
    http_status = 403


class UnknownModelPack(ModelError):
    code = "unknown_model_pack"
    http_status = 422

ALL_ERRORS = (*ALL_ERRORS, ModelLicenseNotAccepted, UnknownModelPack)
