//! What to do about an error, for every error of the data path: the one question a
//! caller asks of a failure (retry it, tell an operator, or report a bug). Each stage's
//! error type answers it with a `kind()`; the sidecar acts on the answer
//! (`sidecar::stream_apply::run_direction`).

/// What to do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Retry with backoff; nothing needs to change.
    Transient,
    /// Stop and tell a human; retrying will fail the same way until something is fixed
    /// (the sidecar retries slowly, so it resumes by itself once it is).
    NeedsOperator,
    /// A protocol violation or an impossible state: stop with the position kept and ask
    /// for a bug report; retrying would only repeat it.
    Bug,
}
