//! The library's one error type: a kind, a message, the context it passed
//! through, and the error it came from (apache/iceberg-rust's `Error` is the
//! model).
//!
//! The kind says what the caller can do about it, and the process's exit
//! status follows it ([`ErrorKind::exit_code`], documented in the README):
//!
//! | kind | exit | meaning |
//! |---|---|---|
//! | `Internal` | 1 | a bug, or a failure nothing else classifies |
//! | `Usage` | 2 | the command line is wrong (clap's own status) |
//! | `BadInput` | 4 | a spec, manifest, model, path or table contents are wrong |
//! | `Conflict` | 5 | another writer got there first, or the thing exists |
//! | `Storage` | 6 | object storage, the disk or the catalog failed or refused |
//!
//! (3 is `ingest`'s "done, but some inputs were rejected", not an error.)
//!
//! Errors of the crates below us are classified once, in the `From`
//! conversions here (an I/O error's kind, Iceberg's and Lance's conflict
//! kinds, object_store's precondition failures); an error built by our code
//! with [`bail!`] or [`err!`] is `BadInput` unless it names another kind
//! (`bail!(kind: Storage, ...)`). Context ([`Context::context`]) adds a
//! message and keeps the kind. A spec error keeps its file, key and line
//! ([`Error::spec`]).
//!
//! `{}` shows the context and the message (outermost first); `{:#}` adds
//! the chain of causes. Nothing here formats secrets: messages are built by
//! callers that redact (see `trust.rs`).

use std::fmt;
use std::path::PathBuf;

/// What kind of failure an [`Error`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A bug, or a failure nothing else classifies.
    Internal,
    /// The command line is wrong.
    Usage,
    /// What the user or the table gave us is wrong: a spec, a manifest, a
    /// model, a path, a row.
    BadInput,
    /// Another writer committed first, or what was to be created exists.
    Conflict,
    /// Object storage, the local disk or the catalog failed or refused.
    Storage,
}

impl ErrorKind {
    /// The process exit status for this kind.
    pub fn exit_code(self) -> u8 {
        match self {
            ErrorKind::Internal => 1,
            ErrorKind::Usage => 2,
            ErrorKind::BadInput => 4,
            ErrorKind::Conflict => 5,
            ErrorKind::Storage => 6,
        }
    }

    /// The kind whose exit status is `code`.
    pub fn from_exit_code(code: u8) -> Option<Self> {
        [
            ErrorKind::Internal,
            ErrorKind::Usage,
            ErrorKind::BadInput,
            ErrorKind::Conflict,
            ErrorKind::Storage,
        ]
        .into_iter()
        .find(|k| k.exit_code() == code)
    }

    /// The kind's name, as logs and the README spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Internal => "internal",
            ErrorKind::Usage => "usage",
            ErrorKind::BadInput => "bad input",
            ErrorKind::Conflict => "conflict",
            ErrorKind::Storage => "storage",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Where in a spec file an error is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecPlace {
    /// The spec file.
    pub file: PathBuf,
    /// The key at fault (dotted, as `similar.to`), if one is.
    pub key: Option<String>,
    /// 1-based line of that key, if known.
    pub line: Option<usize>,
    /// What is wrong, without the place.
    pub reason: String,
}

/// An error of the library. See the module docs.
pub struct Error(Box<Inner>);

struct Inner {
    kind: ErrorKind,
    /// Our message; `None` when the error is a wrapped foreign one whose
    /// own `Display` is the message.
    message: Option<String>,
    /// Context added on the way out, innermost first.
    context: Vec<String>,
    /// The error this came from (or, without a message, the error itself).
    source: Option<Source>,
    /// The spec place, for errors about a spec.
    spec: Option<SpecPlace>,
}

/// A `Result` with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A new error of `kind` with `message`.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self(Box::new(Inner {
            kind,
            message: Some(message.into()),
            context: Vec::new(),
            source: None,
            spec: None,
        }))
    }

    /// A foreign error of `kind`, shown as itself.
    pub fn wrap(kind: ErrorKind, source: impl Into<Source>) -> Self {
        Self(Box::new(Inner {
            kind,
            message: None,
            context: Vec::new(),
            source: Some(source.into()),
            spec: None,
        }))
    }

    /// An error about `key` of the spec `file` (at `line`): bad input.
    pub fn spec(
        file: impl Into<PathBuf>,
        key: Option<&str>,
        line: Option<usize>,
        message: impl Into<String>,
    ) -> Self {
        let place = SpecPlace {
            file: file.into(),
            key: key.map(str::to_string),
            line,
            reason: message.into(),
        };
        let message = format!(
            "spec {}: {}{}{}",
            place.file.display(),
            place
                .key
                .as_ref()
                .map(|k| format!("`{k}`: "))
                .unwrap_or_default(),
            place.reason,
            place
                .line
                .map(|l| format!(" (line {l})"))
                .unwrap_or_default()
        );
        let mut e = Self::new(ErrorKind::BadInput, message);
        e.0.spec = Some(place);
        e
    }

    /// The kind.
    pub fn kind(&self) -> ErrorKind {
        self.0.kind
    }

    /// The same error with another kind.
    pub fn with_kind(mut self, kind: ErrorKind) -> Self {
        self.0.kind = kind;
        self
    }

    /// Adds `message` as context around this error (the kind is kept).
    pub fn context(mut self, message: impl fmt::Display) -> Self {
        self.0.context.push(message.to_string());
        self
    }

    /// Records `source` as the cause.
    pub fn with_source(mut self, source: impl Into<Source>) -> Self {
        self.0.source = Some(source.into());
        self
    }

    /// The spec file, key and line, for an error about a spec.
    pub fn spec_place(&self) -> Option<&SpecPlace> {
        self.0.spec.as_ref()
    }

    fn write_head(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for c in self.0.context.iter().rev() {
            write!(f, "{c}: ")?;
        }
        match (&self.0.message, &self.0.source) {
            (Some(m), _) => f.write_str(m),
            (None, Some(s)) => write!(f, "{s}"),
            (None, None) => f.write_str(self.0.kind.as_str()),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_head(f)?;
        if f.alternate() {
            let mut next = std::error::Error::source(self);
            let mut last = String::new();
            while let Some(e) = next {
                let text = e.to_string();
                // Some errors repeat their cause in their own message.
                if !text.is_empty() && text != last {
                    write!(f, ": {text}")?;
                }
                last = text;
                next = e.source();
            }
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self:#} [{}]", self.0.kind)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        let s = self.0.source.as_deref()?;
        if self.0.message.is_none() {
            // The wrapped error is shown as this one; its causes follow.
            s.source()
        } else {
            Some(s)
        }
    }
}

/// Adds context to a failure, keeping its kind (or, for an `Option`, making
/// a `BadInput` error of the context).
pub trait Context<T> {
    /// Wraps the error with `message`.
    fn context<C: fmt::Display>(self, message: C) -> Result<T>;
    /// Wraps the error with the message `f` makes, only on failure.
    fn with_context<C: fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T>;
    /// Sets the error's kind.
    fn kind(self, kind: ErrorKind) -> Result<T>;
}

impl<T, E: Into<Error>> Context<T> for std::result::Result<T, E> {
    fn context<C: fmt::Display>(self, message: C) -> Result<T> {
        self.map_err(|e| e.into().context(message))
    }

    fn with_context<C: fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.map_err(|e| e.into().context(f()))
    }

    fn kind(self, kind: ErrorKind) -> Result<T> {
        self.map_err(|e| e.into().with_kind(kind))
    }
}

impl<T> Context<T> for Option<T> {
    fn context<C: fmt::Display>(self, message: C) -> Result<T> {
        self.ok_or_else(|| Error::new(ErrorKind::BadInput, message.to_string()))
    }

    fn with_context<C: fmt::Display, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.ok_or_else(|| Error::new(ErrorKind::BadInput, f().to_string()))
    }

    fn kind(self, kind: ErrorKind) -> Result<T> {
        self.ok_or_else(|| Error::new(kind, "missing value"))
    }
}

/// An [`Error`] from a format string: `err!("...")` is `BadInput`,
/// `err!(kind: Storage, "...")` names the kind.
macro_rules! err {
    (kind: $kind:ident, $($arg:tt)+) => {
        $crate::error::Error::new($crate::error::ErrorKind::$kind, format!($($arg)+))
    };
    ($($arg:tt)+) => {
        $crate::error::Error::new($crate::error::ErrorKind::BadInput, format!($($arg)+))
    };
}

/// Returns an [`err!`] error.
macro_rules! bail {
    ($($arg:tt)+) => {
        return Err($crate::error::err!($($arg)+))
    };
}

pub(crate) use {bail, err};

/// Classifies a foreign error type with a fixed kind.
macro_rules! from_kind {
    ($($ty:ty => $kind:ident),+ $(,)?) => {
        $(impl From<$ty> for Error {
            fn from(e: $ty) -> Self {
                Error::wrap(ErrorKind::$kind, e)
            }
        })+
    };
}

from_kind! {
    serde_json::Error => BadInput,
    serde_yaml::Error => BadInput,
    url::ParseError => BadInput,
    std::num::ParseIntError => BadInput,
    std::num::ParseFloatError => BadInput,
    std::num::TryFromIntError => BadInput,
    std::str::Utf8Error => BadInput,
    std::string::FromUtf8Error => BadInput,
    parquet::errors::ParquetError => BadInput,
    arrow_schema::ArrowError => Internal,
    tokio::task::JoinError => Internal,
    std::fmt::Error => Internal,
    sqlx::Error => Storage,
    candle_core::Error => BadInput,
    std::sync::mpsc::RecvError => Internal,
    std::ffi::NulError => BadInput,
    symphonia::core::errors::Error => BadInput,
    image::ImageError => BadInput,
    csv::Error => BadInput,
    object_store::path::Error => BadInput,
    crate::content_id::BadContentId => BadInput,
    crate::catalog::commit::Conflict => Conflict,
    crate::catalog::filter::FilterError => BadInput,
    crate::view::compact::ArenaFull => BadInput,
}

impl From<Source> for Error {
    fn from(e: Source) -> Self {
        Error::wrap(ErrorKind::Internal, e)
    }
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        use std::io::ErrorKind as K;
        let kind = match e.kind() {
            K::NotFound
            | K::PermissionDenied
            | K::InvalidInput
            | K::InvalidData
            | K::InvalidFilename
            | K::IsADirectory
            | K::NotADirectory
            | K::FileTooLarge => ErrorKind::BadInput,
            K::AlreadyExists => ErrorKind::Conflict,
            _ => ErrorKind::Storage,
        };
        Error::wrap(kind, e)
    }
}

impl From<object_store::Error> for Error {
    fn from(e: object_store::Error) -> Self {
        let kind = match e {
            object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. } => ErrorKind::Conflict,
            _ => ErrorKind::Storage,
        };
        Error::wrap(kind, e)
    }
}

impl From<iceberg::Error> for Error {
    fn from(e: iceberg::Error) -> Self {
        use iceberg::ErrorKind as K;
        let kind = match e.kind() {
            K::CatalogCommitConflicts | K::TableAlreadyExists | K::NamespaceAlreadyExists => {
                ErrorKind::Conflict
            }
            K::DataInvalid
            | K::FeatureUnsupported
            | K::TableNotFound
            | K::NamespaceNotFound
            | K::PreconditionFailed => ErrorKind::BadInput,
            _ => ErrorKind::Storage,
        };
        Error::wrap(kind, e)
    }
}

impl From<lance::Error> for Error {
    fn from(e: lance::Error) -> Self {
        use lance::Error as L;
        let kind = match &e {
            L::CommitConflict { .. }
            | L::RetryableCommitConflict { .. }
            | L::IncompatibleTransaction { .. }
            | L::TooMuchWriteContention { .. }
            | L::DatasetAlreadyExists { .. }
            | L::VersionConflict { .. } => ErrorKind::Conflict,
            L::InvalidInput { .. }
            | L::SchemaMismatch { .. }
            | L::DatasetNotFound { .. }
            | L::CorruptFile { .. }
            | L::NotSupported { .. }
            | L::FieldNotFound { .. }
            | L::VersionNotFound { .. } => ErrorKind::BadInput,
            L::Internal { .. } | L::Arrow { .. } => ErrorKind::Internal,
            _ => ErrorKind::Storage,
        };
        Error::wrap(kind, e)
    }
}

impl From<crate::files::ReadError> for Error {
    fn from(e: crate::files::ReadError) -> Self {
        let kind = match &e {
            crate::files::ReadError::Io(io)
                if io.kind() != std::io::ErrorKind::PermissionDenied =>
            {
                ErrorKind::Storage
            }
            _ => ErrorKind::BadInput,
        };
        Error::wrap(kind, e)
    }
}

impl From<crate::source::FetchError> for Error {
    fn from(e: crate::source::FetchError) -> Self {
        use crate::source::FetchError as F;
        let kind = match &e {
            F::NotFound { .. } | F::Corrupt { .. } | F::Untrusted { .. } => ErrorKind::BadInput,
            _ => ErrorKind::Storage,
        };
        Error::wrap(kind, e)
    }
}

impl From<crate::fs::FsError> for Error {
    fn from(e: crate::fs::FsError) -> Self {
        Error::wrap(ErrorKind::Storage, e)
    }
}

impl From<clap::Error> for Error {
    fn from(e: clap::Error) -> Self {
        Error::wrap(ErrorKind::Usage, e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn context_keeps_the_kind_and_shows_outermost_first() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "peer hung up");
        let e: Error = Err::<(), _>(io)
            .context("reading blob b1")
            .context("epoch 2")
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Storage);
        assert_eq!(e.to_string(), "epoch 2: reading blob b1: peer hung up");
        assert_eq!(e.kind().exit_code(), 6);
    }

    #[test]
    fn chains_show_causes_once() {
        let inner = std::io::Error::other("disk gone");
        let e = err!(kind: Storage, "writing entry").with_source(inner);
        assert_eq!(format!("{e:#}"), "writing entry: disk gone");
        assert_eq!(e.to_string(), "writing entry");
        let cause = std::error::Error::source(&e).unwrap();
        assert!(cause.downcast_ref::<std::io::Error>().is_some());
    }

    #[test]
    fn our_errors_default_to_bad_input_and_name_other_kinds() {
        fn f(n: u32) -> Result<()> {
            if n == 0 {
                bail!("n must be positive, got {n}");
            }
            if n > 9 {
                bail!(kind: Conflict, "{n} exists");
            }
            Ok(())
        }
        assert_eq!(f(0).unwrap_err().kind(), ErrorKind::BadInput);
        assert_eq!(f(10).unwrap_err().kind(), ErrorKind::Conflict);
        assert_eq!(f(10).unwrap_err().to_string(), "10 exists");
        assert!(f(3).is_ok());
        let none: Option<u8> = None;
        assert_eq!(
            none.context("no bucket").unwrap_err().kind(),
            ErrorKind::BadInput
        );
    }

    #[test]
    fn spec_errors_keep_their_place() {
        let e = Error::spec("/s/a.yaml", Some("similar.k"), Some(7), "expected a number")
            .context("resolving view a");
        let p = e.spec_place().unwrap();
        assert_eq!(p.line, Some(7));
        assert_eq!(p.key.as_deref(), Some("similar.k"));
        assert_eq!(
            e.to_string(),
            "resolving view a: spec /s/a.yaml: `similar.k`: expected a number (line 7)"
        );
        assert_eq!(e.kind().exit_code(), 4);
    }

    #[test]
    fn foreign_kinds_are_classified() {
        let gone = std::io::Error::from(std::io::ErrorKind::NotFound);
        assert_eq!(Error::from(gone).kind(), ErrorKind::BadInput);
        let exists = std::io::Error::from(std::io::ErrorKind::AlreadyExists);
        assert_eq!(Error::from(exists).kind(), ErrorKind::Conflict);
        let ice = iceberg::Error::new(iceberg::ErrorKind::CatalogCommitConflicts, "lost");
        assert_eq!(Error::from(ice).kind(), ErrorKind::Conflict);
        let os = object_store::Error::Precondition {
            path: "p".into(),
            source: "etag".into(),
        };
        assert_eq!(Error::from(os).kind(), ErrorKind::Conflict);
    }
}
