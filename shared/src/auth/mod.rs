//! Who may do what.
//!
//! | module | what |
//! |---|---|
//! | [`pipeline`] | the pipeline's credentials: the ingest key and per-job ingest tokens |
//! | [`jwt`] | the viewer's JWT (RS256 via a JWKS, HS256) turned into a [`Viewer`] |
//! | `jwks` | the JWKS keys: inline or fetched, cached, refetched for an unknown `kid` |
//!
//! And the one rule every read route applies, [`Viewer::can_read`]: history, the
//! archive fallback, SSE and WebSocket `$connect` all ask it, so the rule is written
//! once. A job the viewer may not read answers exactly like a missing one (404).

mod jwks;
pub mod jwt;
pub mod pipeline;

pub use jwt::Viewer;

/// A job as the read rule sees it, wherever it was found (Redis or the archive).
pub trait ReadableJob {
    /// The user the job belongs to.
    fn owner(&self) -> &str;
}

impl Viewer {
    /// Whether this viewer may read `job`: its owner may.
    pub fn can_read(&self, job: &impl ReadableJob) -> bool {
        job.owner() == self.user
    }
}

impl ReadableJob for crate::store::JobMeta {
    fn owner(&self) -> &str {
        &self.owner
    }
}

impl ReadableJob for crate::archive::Manifest {
    fn owner(&self) -> &str {
        &self.owner
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Job(&'static str);

    impl ReadableJob for Job {
        fn owner(&self) -> &str {
            self.0
        }
    }

    fn viewer(user: &str) -> Viewer {
        Viewer {
            user: user.into(),
            expires_at_ms: None,
        }
    }

    #[test]
    fn the_owner_reads_the_job() {
        assert!(viewer("alice").can_read(&Job("alice")));
    }

    #[test]
    fn another_user_does_not_read_the_job() {
        assert!(!viewer("bob").can_read(&Job("alice")));
        assert!(!viewer("").can_read(&Job("alice")));
        assert!(!viewer("Alice").can_read(&Job("alice")));
    }
}
