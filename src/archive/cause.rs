//! Why a read of the archive stream failed, told by type, not by an error's text.
//!
//! The restore pipeline is a stack of `Read`ers (store → OpenPGP → pipe → gunzip → tar guard →
//! tar), and each only sees an `io::Error` from the one below. The layers where a failure
//! *starts* put a marker inside that error ([`SourceFailed`] at the store's reader, [`PipeClosed`]
//! at the pipe between the pipeline's threads, [`Refusal`] at the tar guard); whatever wraps it on
//! the way up, [`find`] walks the error's chain (`io::Error::get_ref`, `Error::source`) to the
//! marker, and [`classify`] turns it into the right [`ArchiveError`].

use std::error::Error;
use std::fmt;
use std::io::{self, Read};

use super::ArchiveError;

/// The backup's object could not be read from its store (an S3 server that went away mid-download,
/// a local disk's read error): nothing is known about the backup itself.
#[derive(Debug)]
pub struct SourceFailed(pub io::Error);

impl fmt::Display for SourceFailed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Error for SourceFailed {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        Some(&self.0)
    }
}

/// Marks every error the store's reader gives as a [`SourceFailed`].
pub struct Source<R>(pub R);

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.0.read(buf) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if find::<SourceFailed>(&e).is_some() => return Err(e),
                Err(e) => return Err(io::Error::new(e.kind(), SourceFailed(e))),
                Ok(n) => return Ok(n),
            }
        }
    }
}

/// The other end of a pipe between two pipeline threads went away: this stage did nothing wrong,
/// the other one's error is the one to tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipeClosed {
    /// The stage reading from the pipe stopped.
    Downstream,
    /// The stage writing into the pipe stopped before the end.
    Upstream,
}

impl fmt::Display for PipeClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PipeClosed::Downstream => "the next stage of the pipeline stopped",
            PipeClosed::Upstream => "the previous stage of the pipeline failed",
        })
    }
}

impl Error for PipeClosed {}

impl PipeClosed {
    pub fn error(self) -> io::Error {
        let kind = match self {
            PipeClosed::Downstream => io::ErrorKind::BrokenPipe,
            PipeClosed::Upstream => io::ErrorKind::UnexpectedEof,
        };
        io::Error::new(kind, self)
    }
}

/// What the tar guard refused, carried through the `tar` crate inside an `io::Error`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// [`ArchiveError::Damaged`]
    Damaged(String),
    /// [`ArchiveError::Hostile`]
    Hostile { entry: String, reason: String },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Damaged(why) => f.write_str(why),
            Refusal::Hostile { entry, reason } => write!(f, "{entry:?}: {reason}"),
        }
    }
}

impl Error for Refusal {}

impl Refusal {
    pub fn to_archive(&self) -> ArchiveError {
        match self {
            Refusal::Damaged(why) => ArchiveError::Damaged(why.clone()),
            Refusal::Hostile { entry, reason } => ArchiveError::hostile(entry, reason.clone()),
        }
    }

    pub fn error(&self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self.clone())
    }
}

/// The first `T` in `e`'s chain: `e` itself, what an `io::Error` holds, and every `source()`.
pub fn find<'e, T: Error + 'static>(e: &'e (dyn Error + 'static)) -> Option<&'e T> {
    let mut current = Some(e);
    // a chain is short; the bound only guards against an error that is its own source
    for _ in 0..64 {
        let e = current?;
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        // `io::Error::source` skips the error it holds: look at that one first
        current = match e.downcast_ref::<io::Error>().and_then(io::Error::get_ref) {
            Some(inner) => Some(inner as &(dyn Error + 'static)),
            None => e.source(),
        };
    }
    None
}

/// [`find`] over an `anyhow` error's chain (Sequoia's errors).
pub fn find_in_anyhow<T: Error + 'static>(e: &anyhow::Error) -> Option<&T> {
    e.chain().find_map(find::<T>)
}

/// Is `e` (anywhere in its chain) an `io::Error` of this kind?
pub fn has_kind(e: &(dyn Error + 'static), kind: io::ErrorKind) -> bool {
    let mut current = Some(e);
    for _ in 0..64 {
        let Some(e) = current else { return false };
        if let Some(io) = e.downcast_ref::<io::Error>() {
            if io.kind() == kind {
                return true;
            }
            if let Some(inner) = io.get_ref() {
                current = Some(inner as &(dyn Error + 'static));
                continue;
            }
        }
        current = e.source();
    }
    false
}

/// The error a failed read means, when its cause is one of the markers: the tar guard's refusal,
/// the store's failure, or a neighbouring stage that stopped. `None` for anything else (the
/// caller knows what an unmarked failure at its layer means).
pub fn marked(e: &io::Error) -> Option<ArchiveError> {
    marked_dyn(e)
}

/// [`marked`] for any error.
pub fn marked_dyn(e: &(dyn Error + 'static)) -> Option<ArchiveError> {
    if let Some(r) = find::<Refusal>(e) {
        return Some(r.to_archive());
    }
    if let Some(s) = find::<SourceFailed>(e) {
        return Some(ArchiveError::StoreRead(s.to_string()));
    }
    if let Some(p) = find::<PipeClosed>(e) {
        return Some(ArchiveError::io(
            "passing the stream between the pipeline's stages",
            p.error(),
        ));
    }
    None
}

/// A failed read of the archive stream: a marked cause, else the object is damaged (`context`
/// says where, when it helps).
pub fn classify(e: io::Error, context: Option<&str>) -> ArchiveError {
    if let Some(known) = marked(&e) {
        return known;
    }
    let text = match context {
        Some(c) => format!("{c}: {e}"),
        None => e.to_string(),
    };
    if has_kind(&e, io::ErrorKind::UnexpectedEof) {
        ArchiveError::Damaged(format!("the object ends too early ({text})"))
    } else {
        ArchiveError::Damaged(text)
    }
}

/// Is this the error of a stage that only saw its neighbour stop?
pub fn is_pipe_error(e: &ArchiveError) -> bool {
    match e {
        ArchiveError::Io { source, .. } => find::<PipeClosed>(source).is_some(),
        _ => false,
    }
}

/// The words of a thread's panic, when it panicked with a message.
pub fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "no message".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(io::Error);
    impl fmt::Display for Wrapper {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl Error for Wrapper {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn markers_are_found_through_wrappers_whatever_the_text() {
        let store = io::Error::new(io::ErrorKind::UnexpectedEof, "the stream stopped");
        let mut src = Source(std::io::Cursor::new(Vec::<u8>::new()).chain(Failing(Some(store))));
        let e = src.read(&mut [0u8; 8]).unwrap_err();
        // wrapped twice, as the tar crate and a reader above it would
        let e = io::Error::other(Wrapper(io::Error::new(io::ErrorKind::InvalidData, Wrapper(e))));
        assert!(matches!(classify(e, None), ArchiveError::StoreRead(t) if t.contains("stream stopped")));

        let pipe = io::Error::other(Wrapper(PipeClosed::Upstream.error()));
        assert!(is_pipe_error(&classify(pipe, None)));
        // the same words without the marker are not a pipe error
        let text_only = io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the previous stage of the pipeline failed",
        );
        assert!(matches!(classify(text_only, None), ArchiveError::Damaged(_)));

        let refused = io::Error::other(Wrapper(Refusal::Damaged("too big".into()).error()));
        assert!(matches!(classify(refused, None), ArchiveError::Damaged(t) if t == "too big"));
    }

    #[test]
    fn an_error_already_marked_is_not_marked_twice() {
        let inner = io::Error::other(SourceFailed(io::Error::other("gone")));
        let mut src = Source(Failing(Some(inner)));
        let e = src.read(&mut [0u8; 8]).unwrap_err();
        assert_eq!(e.to_string(), "gone");
    }

    struct Failing(Option<io::Error>);
    impl Read for Failing {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(self.0.take().unwrap_or_else(|| io::Error::other("again")))
        }
    }
}
