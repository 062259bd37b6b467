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


# --- authentication -------------------------------------------------------------------------


class AuthenticationFailed(FaceSearchError):
    """A login failed. One message whatever was wrong (unknown user, password or one-time code),
    so the answer never tells which part of the credentials was right."""

    code = "authentication_failed"
    http_status = 401
    default_message = "invalid user name, password or one-time code"

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.default_message)


class TokenInvalid(AuthenticationFailed):
    code = "token_invalid"
    default_message = "the access token is not valid"


class TokenExpired(AuthenticationFailed):
    code = "token_expired"
    default_message = "the access token has expired"


class SessionExpired(TokenExpired):
    code = "session_expired"
    default_message = "the session has expired; sign in again"


class AccountLocked(FaceSearchError):
    """Too many failed logins; ``retry_after_s`` goes into the HTTP ``Retry-After`` header."""

    code = "account_locked"
    http_status = 429

    def __init__(self, retry_after_s: int, message: str | None = None) -> None:
        self.retry_after_s = int(retry_after_s)
        super().__init__(
            message or f"too many failed sign-in attempts; try again in {self.retry_after_s} s"
        )


class PasswordPolicy(InvalidInput):
    """A new password breaks the password policy; ``violations`` lists every broken rule."""

    code = "password_policy"
    http_status = 422

    def __init__(self, violations: list[str] | str) -> None:
        self.violations = [violations] if isinstance(violations, str) else list(violations)
        super().__init__("the password " + "; ".join(self.violations))


ALL_ERRORS = (*ALL_ERRORS, AuthenticationFailed, TokenInvalid, TokenExpired, SessionExpired,
              AccountLocked, PasswordPolicy)


class Forbidden(FaceSearchError):
    code = "forbidden"
    http_status = 403


class CaseNumberRejected(InvalidInput):
    code = "case_number_rejected"


class PurposeRejected(InvalidInput):
    code = "purpose_rejected"


class Conflict(FaceSearchError):
    code = "conflict"
    http_status = 409


class SearchNotFound(NotFound):
    code = "search_not_found"


ALL_ERRORS = (*ALL_ERRORS, Forbidden, CaseNumberRejected, PurposeRejected, Conflict, SearchNotFound)


class CsrfRejected(Forbidden):
    """A state-changing form came without the session's CSRF token (or with a wrong one)."""

    code = "csrf_rejected"


ALL_ERRORS = (*ALL_ERRORS, CsrfRejected)


class RateLimited(FaceSearchError):
    """Too many requests of one kind (sign-in, search, case export) from one account or one
    source address; ``retry_after_s`` goes into the HTTP ``Retry-After`` header."""

    code = "rate_limited"
    http_status = 429

    def __init__(self, retry_after_s: int, message: str | None = None) -> None:
        self.retry_after_s = int(retry_after_s)
        super().__init__(message or f"too many requests; try again in {self.retry_after_s} s")


ALL_ERRORS = (*ALL_ERRORS, RateLimited)


# --- privacy requests (erasure by face, suppression list) -----------------------------------


class ErasureRequestNotFound(NotFound):
    code = "erasure_request_not_found"


class ErasureNotPending(Conflict):
    """Confirming or cancelling an erasure request that is no longer awaiting confirmation."""

    code = "erasure_not_pending"


class SuppressionNotFound(NotFound):
    code = "suppression_not_found"


class SuppressionAlreadyLifted(Conflict):
    code = "suppression_already_lifted"


ALL_ERRORS = (*ALL_ERRORS, ErasureRequestNotFound, ErasureNotPending, SuppressionNotFound,
              SuppressionAlreadyLifted)


class KeyConfigurationError(FaceSearchError):
    """The field-encryption key set-up is unfit for production (missing key, a key file readable
    by others, a generated development key): the server refuses to start."""

    code = "key_configuration"
    http_status = 500


ALL_ERRORS = (*ALL_ERRORS, KeyConfigurationError)


class BackupInvalid(InvalidInput):
    """A backup that may not be restored: altered, incomplete, made with another key, or of
    another database kind (``facesearch backup restore`` verifies before it touches anything)."""

    code = "backup_invalid"


ALL_ERRORS = (*ALL_ERRORS, BackupInvalid)
