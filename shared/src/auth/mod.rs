//! Who may do what.
//!
//! | module | what |
//! |---|---|
//! | [`pipeline`] | the pipeline's credentials: the ingest key and per-job ingest tokens |
//! | [`jwt`] | the viewer's JWT (RS256 via a JWKS, HS256) turned into a [`Viewer`] |
//! | `jwks` | the JWKS keys: inline or fetched, cached, refetched for an unknown `kid` |
//! | [`share`] | share links: signed tokens that read one job until they expire or are revoked |
//!
//! And the one rule every read route applies, [`Viewer::can_read`] (the owner, or a
//! member of the job's org): history, raw log, search, the
//! archive fallback, SSE and WebSocket `$connect` all ask it, so the rule is written
//! once. A job the viewer may not read answers exactly like a missing one (404).

mod jwks;
pub mod jwt;
pub mod pipeline;
pub mod share;

pub use jwt::Viewer;

/// A job as the read rule sees it, wherever it was found (Redis or the archive).
pub trait ReadableJob {
    /// The user the job belongs to.
    fn owner(&self) -> &str;
    /// The organisation whose members read it too, if any.
    fn org(&self) -> Option<&str>;
}

impl Viewer {
    /// Whether this viewer may read `job` (whose id is `id`): its owner may, and so
    /// may a member of the job's organisation (the viewer's org claim equals the job's
    /// `org`); a share link reads the one job it was issued for.
    pub fn can_read(&self, id: &logstream_core::ids::JobId, job: &impl ReadableJob) -> bool {
        if let Some(grant) = &self.share {
            return &grant.job == id;
        }
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
    use logstream_core::ids::JobId;

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
            share: None,
        }
    }

    fn id(raw: &str) -> JobId {
        JobId::parse(raw).unwrap()
    }

    /// Whether `viewer` reads job `build-1` described by `job`.
    fn reads(viewer: &Viewer, job: &Job) -> bool {
        viewer.can_read(&id("build-1"), job)
    }

    fn member(user: &str, org: &str) -> Viewer {
        Viewer {
            org: Some(org.into()),
            ..viewer(user)
        }
    }

    #[test]
    fn the_owner_reads_the_job() {
        assert!(reads(&viewer("alice"), &Job("alice", None)));
        assert!(reads(&viewer("alice"), &Job("alice", Some("acme"))));
        assert!(reads(
            &member("alice", "other"),
            &Job("alice", Some("acme"))
        ));
    }

    #[test]
    fn another_user_does_not_read_the_job() {
        assert!(!reads(&viewer("bob"), &Job("alice", None)));
        assert!(!reads(&viewer(""), &Job("alice", None)));
        assert!(!reads(&viewer("Alice"), &Job("alice", None)));
    }

    #[test]
    fn a_share_link_reads_its_own_job_and_no_other() {
        let link = Viewer {
            share: Some(share::Grant {
                job: id("build-1"),
                generation: 0,
                expires_at: u64::MAX,
            }),
            ..viewer("")
        };
        assert!(reads(&link, &Job("alice", None)));
        assert!(!link.can_read(&id("build-2"), &Job("alice", None)));
        // Not as an owner with an empty name, nor as an org member.
        assert!(!link.can_read(&id("build-2"), &Job("", Some("acme"))));
    }

    #[test]
    fn a_member_of_the_jobs_org_reads_it_and_no_one_else_does() {
        let job = Job("alice", Some("acme"));
        assert!(reads(&member("bob", "acme"), &job));
        assert!(!reads(&member("bob", "other"), &job), "another org");
        assert!(!reads(&member("bob", "ACME"), &job), "orgs compare exactly");
        assert!(!reads(&viewer("bob"), &job), "no org claim");
        assert!(
            !reads(&member("bob", "acme"), &Job("alice", None)),
            "a job without an org is its owner's alone"
        );
    }
}
