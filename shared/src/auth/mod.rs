//! Who may do what.
//!
//! | module | what |
//! |---|---|
//! | [`pipeline`] | the pipeline's credentials: the ingest key and per-job ingest tokens |
//! | [`jwt`] | the viewer's JWT (RS256 via a JWKS, HS256) turned into a [`Viewer`] |
//! | `jwks` | the JWKS keys: inline or fetched, cached, refetched for an unknown `kid` |
//!
//! And the one rule every read route applies, [`Viewer::can_read`] (the owner, or a
//! member of the job's org): history, raw log, search, the
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
    /// The organisation whose members read it too, if any.
    fn org(&self) -> Option<&str>;
}

impl Viewer {
    /// Whether this viewer may read `job`: its owner may, and so may a member of the
    /// job's organisation (the viewer's org claim equals the job's `org`).
    pub fn can_read(&self, job: &impl ReadableJob) -> bool {
        job.owner() == self.user
            || job
                .org()
                .is_some_and(|org| self.org.as_deref() == Some(org))
    }
}

impl ReadableJob for crate::store::JobMeta {
    fn owner(&self) -> &str {
        &self.owner
    }

    fn org(&self) -> Option<&str> {
        self.org.as_deref()
    }
}

impl ReadableJob for crate::archive::Manifest {
    fn owner(&self) -> &str {
        &self.owner
    }

    fn org(&self) -> Option<&str> {
        self.org.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Job(&'static str, Option<&'static str>);

    impl ReadableJob for Job {
        fn owner(&self) -> &str {
            self.0
        }

        fn org(&self) -> Option<&str> {
            self.1
        }
    }

    fn viewer(user: &str) -> Viewer {
        Viewer {
            user: user.into(),
            expires_at_ms: None,
            org: None,
        }
    }

    fn member(user: &str, org: &str) -> Viewer {
        Viewer {
            org: Some(org.into()),
            ..viewer(user)
        }
    }

    #[test]
    fn the_owner_reads_the_job() {
        assert!(viewer("alice").can_read(&Job("alice", None)));
        assert!(viewer("alice").can_read(&Job("alice", Some("acme"))));
        assert!(member("alice", "other").can_read(&Job("alice", Some("acme"))));
    }

    #[test]
    fn another_user_does_not_read_the_job() {
        assert!(!viewer("bob").can_read(&Job("alice", None)));
        assert!(!viewer("").can_read(&Job("alice", None)));
        assert!(!viewer("Alice").can_read(&Job("alice", None)));
    }

    #[test]
    fn a_member_of_the_jobs_org_reads_it_and_no_one_else_does() {
        let job = Job("alice", Some("acme"));
        assert!(member("bob", "acme").can_read(&job));
        assert!(!member("bob", "other").can_read(&job), "another org");
        assert!(
            !member("bob", "ACME").can_read(&job),
            "orgs compare exactly"
        );
        assert!(!viewer("bob").can_read(&job), "no org claim");
        assert!(
            !member("bob", "acme").can_read(&Job("alice", None)),
            "a job without an org is its owner's alone"
        );
    }
}
