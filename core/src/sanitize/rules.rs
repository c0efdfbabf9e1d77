//! The redaction rules: one regex per token shape, the PEM block markers, and the
//! trigger substrings that decide, through one Aho-Corasick search per line, which
//! regexes are worth running on it (see the module doc of [`super`]).

use std::sync::LazyLock;

use regex::Regex;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Rule {
    AwsKeyId,
    GitHubToken,
    GitLabToken,
    SlackToken,
    SlackWebhook,
    StripeKey,
    Jwt,
    Bearer,
    KeyValue,
    UrlCredentials,
    /// Stateful, so handled by [`Batch`] rather than by a single regex.
    PrivateKey,
}

/// The rules that are one regex each, in the order of [`PATTERN_REGEXES`].
pub(super) const PATTERN_RULES: [Rule; 10] = [
    Rule::AwsKeyId,
    Rule::GitHubToken,
    Rule::GitLabToken,
    Rule::SlackToken,
    Rule::SlackWebhook,
    Rule::StripeKey,
    Rule::Jwt,
    Rule::Bearer,
    Rule::KeyValue,
    Rule::UrlCredentials,
];

impl Rule {
    /// The regex of a pattern rule. Capture groups, when there are any, hold
    /// the secret; the rest of the match is kept. Case folding and word
    /// boundaries are ASCII-only (`(?i-u:…)`, `(?-u:\b)`): the workspace
    /// builds `regex` without `unicode-case`, so a Unicode `(?i)` would not
    /// even compile, and ASCII word boundaries keep the lazy DFA usable on
    /// non-ASCII lines.
    pub(super) fn pattern(self) -> &'static str {
        match self {
            Rule::AwsKeyId => r"(?-u:\b)(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}(?-u:\b)",
            Rule::GitHubToken => r"gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}",
            Rule::GitLabToken => {
                r"gl(?:pat|dt|rt|ptt|cbt|oas|soat|ft|imt|agent)-[A-Za-z0-9_-]{20,}"
            }
            Rule::SlackToken => r"xox[abposr]-[A-Za-z0-9-]{10,}",
            Rule::SlackWebhook => r"(?i-u:https?://hooks\.slack\.com/services/)[A-Za-z0-9/_-]+",
            Rule::StripeKey => r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{10,}|whsec_[A-Za-z0-9]{10,}",
            Rule::Jwt => r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*",
            Rule::Bearer => r"(?i-u:\bbearer)[ \t]+([A-Za-z0-9._~+/=-]{8,})",
            // The key, an optional closing quote, then either `=` or `:` and a
            // quoted value, or `=` and a bare value, or `:`, at least one
            // space and a bare value. An opening quote without its closing
            // one is skipped, so the value is still redacted. A bare value
            // starting with `=` is a comparison (`tokenizers==0.15`).
            Rule::KeyValue => concat!(
                r#"(?i-u:[a-z0-9_.-]*(?:password|passwd|secret|token|api[_-]?key)[a-z0-9_.-]*)"#,
                r#"["']?[ \t]*"#,
                r#"(?:[=:][ \t]*(?:"((?:[^"\\]|\\.)+)"|'([^']+)')"#,
                r#"|=[ \t]*["']?([^\s&"'=][^\s&]*)"#,
                r#"|:[ \t]+["']?([^\s&"'=][^\s&]*))"#,
            ),
            // Greedy up to the last `@` of the authority, so that an
            // unencoded `@` in a password does not leave its end visible.
            Rule::UrlCredentials => r"://([^\s/?#]+)@",
            // Only where a block starts: the block's extent is found by
            // `Batch`, which also looks for `PEM_END`.
            Rule::PrivateKey => r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----",
        }
    }
}

// The patterns are constants, covered by the unit tests: failing to compile is a
// bug to catch at the first line, not a runtime condition.
#[allow(clippy::expect_used)]
pub(super) static PATTERN_REGEXES: LazyLock<[Regex; 10]> = LazyLock::new(|| {
    PATTERN_RULES.map(|rule| Regex::new(rule.pattern()).expect("built-in redaction regex compiles"))
});

// The patterns are constants, covered by the unit tests: failing to compile is a
// bug to catch at the first line, not a runtime condition.
#[allow(clippy::expect_used)]
pub(super) static PEM_BEGIN: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(Rule::PrivateKey.pattern()).expect("built-in PEM BEGIN regex compiles")
});

// The patterns are constants, covered by the unit tests: failing to compile is a
// bug to catch at the first line, not a runtime condition.
#[allow(clippy::expect_used)]
pub(super) static PEM_END: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")
        .expect("built-in PEM END regex compiles")
});

/// A substring without which a rule cannot match.
pub(super) struct Trigger {
    pub(super) text: &'static str,
    pub(super) rule: Rule,
    /// The rule's regex is case-sensitive here, so a match of the
    /// case-insensitive automaton must be confirmed.
    pub(super) exact_case: bool,
}

impl Trigger {
    /// A further cheap check for triggers that are common in plain lines.
    pub(super) fn worth_running(&self, hay: &[u8], trigger_end: usize) -> bool {
        if self.rule != Rule::UrlCredentials {
            return true;
        }
        // `://` is in every URL; credentials need an `@` before the path.
        hay.get(trigger_end..)
            .unwrap_or_default()
            .iter()
            .take_while(|byte| !matches!(byte, b'/' | b'?' | b'#' | b' ' | b'\t'))
            .any(|&byte| byte == b'@')
    }
}

pub(super) const fn exact(text: &'static str, rule: Rule) -> Trigger {
    Trigger {
        text,
        rule,
        exact_case: true,
    }
}

pub(super) const fn any_case(text: &'static str, rule: Rule) -> Trigger {
    Trigger {
        text,
        rule,
        exact_case: false,
    }
}

pub(super) const TRIGGERS: &[Trigger] = &[
    exact("AKIA", Rule::AwsKeyId),
    exact("ASIA", Rule::AwsKeyId),
    exact("ABIA", Rule::AwsKeyId),
    exact("ACCA", Rule::AwsKeyId),
    exact("ghp_", Rule::GitHubToken),
    exact("gho_", Rule::GitHubToken),
    exact("ghu_", Rule::GitHubToken),
    exact("ghs_", Rule::GitHubToken),
    exact("ghr_", Rule::GitHubToken),
    exact("github_pat_", Rule::GitHubToken),
    exact("glpat-", Rule::GitLabToken),
    exact("gldt-", Rule::GitLabToken),
    exact("glrt-", Rule::GitLabToken),
    exact("glptt-", Rule::GitLabToken),
    exact("glcbt-", Rule::GitLabToken),
    exact("gloas-", Rule::GitLabToken),
    exact("glsoat-", Rule::GitLabToken),
    exact("glft-", Rule::GitLabToken),
    exact("glimt-", Rule::GitLabToken),
    exact("glagent-", Rule::GitLabToken),
    exact("xoxa-", Rule::SlackToken),
    exact("xoxb-", Rule::SlackToken),
    exact("xoxp-", Rule::SlackToken),
    exact("xoxo-", Rule::SlackToken),
    exact("xoxs-", Rule::SlackToken),
    exact("xoxr-", Rule::SlackToken),
    any_case("hooks.slack.com/services/", Rule::SlackWebhook),
    exact("sk_live_", Rule::StripeKey),
    exact("sk_test_", Rule::StripeKey),
    exact("rk_live_", Rule::StripeKey),
    exact("rk_test_", Rule::StripeKey),
    exact("whsec_", Rule::StripeKey),
    exact("eyJ", Rule::Jwt),
    any_case("bearer", Rule::Bearer),
    any_case("password", Rule::KeyValue),
    any_case("passwd", Rule::KeyValue),
    any_case("secret", Rule::KeyValue),
    any_case("token", Rule::KeyValue),
    any_case("api_key", Rule::KeyValue),
    any_case("apikey", Rule::KeyValue),
    any_case("api-key", Rule::KeyValue),
    exact("://", Rule::UrlCredentials),
    exact("-----BEGIN ", Rule::PrivateKey),
];

/// A set of [`Rule`]s, one bit each.
#[derive(Clone, Copy)]
pub(super) struct RuleSet(u16);

impl RuleSet {
    pub(super) const EMPTY: Self = Self(0);
    pub(super) const ALL: Self = Self(u16::MAX);

    pub(super) fn insert(&mut self, rule: Rule) {
        self.0 |= 1 << rule as u16;
    }

    pub(super) fn contains(self, rule: Rule) -> bool {
        self.0 & (1 << rule as u16) != 0
    }
}
