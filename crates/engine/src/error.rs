//! Errors of the use-cases, each with the HTTP status and code the API maps it to.

use switchyard_core::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("{0}")]
    NotFound(String),
    /// The request is malformed (400).
    #[error("{message}")]
    BadRequest {
        field: Option<String>,
        message: String,
    },
    /// The input fails the workflow's input schema (422).
    #[error("{message}")]
    InvalidInput {
        field: Option<String>,
        message: String,
    },
    /// An illegal state change (409 `conflict`).
    #[error("{0}")]
    Conflict(String),
    /// An `Idempotency-Key` reused with another request body (409 `idempotency_conflict`).
    #[error("{0}")]
    IdempotencyConflict(String),
    /// The request body is not JSON (415).
    #[error("{0}")]
    UnsupportedMediaType(String),
    #[error("{0}")]
    Unauthorized(String),
    /// Authenticated, but not allowed (an expired or forged blob link) (403).
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    TooLarge(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    /// An invariant of the engine broke (a planner action that does not fit its step, a
    /// waiting step without its job): a bug to report, never the caller's fault (500).
    #[error("internal error: {0}")]
    Internal(String),
}

impl EngineError {
    pub fn status(&self) -> u16 {
        match self {
            EngineError::NotFound(_) => 404,
            EngineError::BadRequest { .. } => 400,
            EngineError::InvalidInput { .. } => 422,
            EngineError::Conflict(_) | EngineError::IdempotencyConflict(_) => 409,
            EngineError::UnsupportedMediaType(_) => 415,
            EngineError::Unauthorized(_) => 401,
            EngineError::Forbidden(_) => 403,
            EngineError::TooLarge(_) => 413,
            EngineError::Internal(_) => 500,
            EngineError::Store(StoreError::Conflict(_)) => 409,
            EngineError::Store(StoreError::NotFound(_)) => 404,
            EngineError::Store(StoreError::Invalid(_)) => 400,
            EngineError::Store(_) => 503,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            EngineError::NotFound(_) => "not_found",
            EngineError::BadRequest { .. } => "bad_request",
            EngineError::InvalidInput { .. } => "invalid_input",
            EngineError::Conflict(_) => "conflict",
            EngineError::IdempotencyConflict(_) => "idempotency_conflict",
            EngineError::UnsupportedMediaType(_) => "unsupported_media_type",
            EngineError::Unauthorized(_) => "unauthorized",
            EngineError::Forbidden(_) => "forbidden",
            EngineError::TooLarge(_) => "too_large",
            EngineError::Internal(_) => "internal",
            EngineError::Store(StoreError::Conflict(_)) => "conflict",
            EngineError::Store(StoreError::NotFound(_)) => "not_found",
            EngineError::Store(StoreError::Corrupt(_)) => "corrupt_state",
            EngineError::Store(StoreError::Invalid(_)) => "bad_request",
            EngineError::Store(_) => "storage_unavailable",
        }
    }

    pub fn field(&self) -> Option<&str> {
        match self {
            EngineError::BadRequest { field, .. } | EngineError::InvalidInput { field, .. } => {
                field.as_deref()
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each error's HTTP status and stable code (docs/api.md#errors): an invariant failure is a 500
    /// `internal`, never a 409 a client would retry; a bad cursor is the caller's 400.
    #[test]
    fn statuses_and_codes() {
        let table = [
            (EngineError::NotFound("x".into()), 404, "not_found"),
            (EngineError::Conflict("x".into()), 409, "conflict"),
            (
                EngineError::IdempotencyConflict("x".into()),
                409,
                "idempotency_conflict",
            ),
            (
                EngineError::UnsupportedMediaType("x".into()),
                415,
                "unsupported_media_type",
            ),
            (EngineError::Internal("x".into()), 500, "internal"),
            (EngineError::Forbidden("x".into()), 403, "forbidden"),
            (EngineError::TooLarge("x".into()), 413, "too_large"),
            (
                EngineError::Store(StoreError::Conflict("x".into())),
                409,
                "conflict",
            ),
            (
                EngineError::Store(StoreError::Invalid("x".into())),
                400,
                "bad_request",
            ),
            (
                EngineError::Store(StoreError::Unavailable("x".into())),
                503,
                "storage_unavailable",
            ),
            (
                EngineError::Store(StoreError::Corrupt("x".into())),
                503,
                "corrupt_state",
            ),
        ];
        for (e, status, code) in table {
            assert_eq!((e.status(), e.code()), (status, code), "{e:?}");
        }
    }
}
