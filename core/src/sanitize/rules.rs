//! The redaction rules: one regex per token shape or secret-bearing syntax, a
//! hand-written finder for URL credentials, the PEM block markers, and the trigger
//! substrings that decide, through one Aho-Corasick search per line, which rules are
//! worth running on it (see the module doc of [`super`]).
//!
//! Which names make a `name=value` a secret (the [`Rule::KeyValue`] regex):
//! - a name *containing* `password`, `passwd`, `passphrase`, `secret`, `token`,
//!   `credential` or `api_key`/`apikey`/`api-key`, in any case, anywhere
//!   (`DB_PASSWORD`, `x-auth-token`, `client_secret`, `credentials`);
//! - a name whose *last part* is `key`, `pass`, `pwd` or `auth`, parts being split by
//!   `_`, `-`, `.` or a camel-case hump (`private_key`, `DB_PASS`, `MYSQL_PWD`,
//!   `x-auth`, `accessKey`, `--pass`), with any value syntax;
//! - one of those four words alone as `word=value` (`pass=…`, `pwd=…`, `auth=…`,
//!   `key=…`), and `pass` or `pwd` also as `"pass": "value"`; never as
//!   `word: value` with a bare value: `--- PASS: TestParse` and
//!   `Key: npm-cache-…` are what test runners and cache steps print, and a
//!   JSON `"key"` or `"auth"` is as often a name as a secret. `PWD=` in
//!   capitals is the shell's working directory and is left alone.
//!
//! So words that merely contain a short one are not names of secrets: `monkey=3`,
//! `passed`, `bypass=1`, `author`, `keyboard`, `KeyError: 'x'`. The price: an
//! all-lower or all-upper compound without a separator (`dbpass=`, `SSHPASS=`) is
//! not recognised either.

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
    Authorization,
    KeyValue,
    CommandLine,
    /// Hand-written: `redact::url_credential_spans`.
    UrlCredentials,
    /// Stateful, so handled by [`Batch`](super::Batch) rather than by a single regex.
    PrivateKey,
}

/// The rules that are one regex each, in the order of [`PATTERN_REGEXES`].
pub(super) const PATTERN_RULES: [Rule; 11] = [
    Rule::AwsKeyId,
    Rule::GitHubToken,
    Rule::GitLabToken,
    Rule::SlackToken,
    Rule::SlackWebhook,
    Rule::StripeKey,
    Rule::Jwt,
    Rule::Bearer,
    Rule::Authorization,
    Rule::KeyValue,
    Rule::CommandLine,
];

/// What the value of a command-line option may be: quoted, or a bare word that is
/// not the next option.
macro_rules! option_value {
    () => {
        r#"(?:"([^"]+)"|'([^']+)'|([^\s"'-]\S*))"#
    };
}

/// A secret's value after `=` or `:`: double-quoted with escapes, single-quoted,
/// or bare up to the next blank. `&` does not end it: a password may hold one.
macro_rules! quoted_value {
    () => {
        r#"(?:"((?:[^"\\]|\\.)+)"|'([^']+)')"#
    };
}
/// A bare value; one starting with `=` is a comparison (`tokenizers==0.15`).
macro_rules! bare_value {
    () => {
        r#"["']?([^\s"'=]\S*)"#
    };
}

impl Rule {
    /// The regex of a pattern rule. Capture groups, when there are any, hold
    /// the secret; the rest of the match is kept. Case folding and word
    /// boundaries are ASCII-only (`(?i-u:…)`, `(?-u:\b)`): the workspace
    /// builds `regex` without `unicode-case`, so a Unicode `(?i)` would not
    /// even compile, and ASCII word boundaries keep the lazy DFA usable on
    /// non-ASCII lines.
    pub(super) fn pattern(self) -> &'static str {
        match self {
            // Not inside a longer run of capitals and digits, but glued to
            // anything else (`KEY_AKIA…`, `AKIA…x`). The end is checked by
            // `aws_key_spans`, so that the character after one id can start
            // the next.
            Rule::AwsKeyId => r"(?:^|[^A-Z0-9])((?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16})",
            Rule::GitHubToken => {
                r"(?i-u:gh[pousr]_)[A-Za-z0-9]{36,}|(?i-u:github_pat_)[A-Za-z0-9_]{22,}"
            }
            Rule::GitLabToken => {
                r"(?i-u:gl(?:pat|dt|rt|ptt|cbt|oas|soat|ft|imt|agent))-[A-Za-z0-9_-]{20,}"
            }
            // Bot, user, app-level, configuration, refresh (`xoxe-`) and rotated
            // (`xoxe.xoxp-`) tokens.
            Rule::SlackToken => r"(?i-u:(?:xoxe\.)?(?:xox[abposre]|xapp))-[A-Za-z0-9-]{10,}",
            Rule::SlackWebhook => r"(?i-u:https?://hooks\.slack\.com/services/)[A-Za-z0-9/_-]+",
            Rule::StripeKey => r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{10,}|whsec_[A-Za-z0-9]{10,}",
            Rule::Jwt => r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*",
            // Alone, `Bearer` needs a token-like word of 8 or more characters,
            // so that prose (`the Bearer scheme`) is left alone.
            Rule::Bearer => r"(?i-u:\bbearer)[ \t]+([A-Za-z0-9._~+/=-]{8,})",
            // After `Authorization:`, whatever the scheme and length: the scheme
            // word is kept, the credentials are not.
            Rule::Authorization => concat!(
                r#"(?i-u:\b(?:proxy-)?authorization)["']?[ \t]*[:=][ \t]*["']?"#,
                r#"(?:[A-Za-z][A-Za-z0-9_.-]*[ \t]+)?([^\s"']+)"#,
            ),
            // See the module doc for the names. A name starts at the start of the
            // text or after a character that cannot be part of it; then an
            // optional closing quote, then either `=` or `:` and a quoted value,
            // or `=` and a bare value, or `:`, at least one space (so that
            // `src/token.rs:12:5` and `Token::new` are not secrets) and a bare
            // value. An opening quote without its closing one is skipped, so the
            // value is still redacted.
            Rule::KeyValue => concat!(
                r#"(?:^|[^A-Za-z0-9_.-])(?:"#,
                // A long name anywhere, or a short one as the last part.
                r#"(?:[A-Za-z0-9_.-]*(?i-u:password|passwd|passphrase|secret|token|credential|api[_-]?key)[A-Za-z0-9_.-]*"#,
                r#"|[A-Za-z0-9_.-]*[_.-](?i-u:key|pass|pwd|auth)"#,
                r#"|[A-Za-z0-9_.-]*[a-z0-9](?:Key|Pass|Pwd|Auth))"#,
                r#"["']?[ \t]*(?:[=:][ \t]*"#,
                quoted_value!(),
                r#"|=[ \t]*"#,
                bare_value!(),
                r#"|:[ \t]+"#,
                bare_value!(),
                // `pass` or `pwd` alone: with `=`, or `:` and a quoted value.
                r#")|(?:(?i-u:pass)|pwd|Pwd)["']?[ \t]*(?:[=:][ \t]*"#,
                quoted_value!(),
                r#"|=[ \t]*"#,
                bare_value!(),
                // `key` or `auth` alone: only with `=`.
                r#")|(?i-u:auth|key)["']?[ \t]*=[ \t]*(?:"#,
                quoted_value!(),
                r#"|"#,
                bare_value!(),
                r#"))"#,
            ),
            // Secrets given as separate command-line arguments:
            // `--password VALUE` (any option named as a secret, see the module
            // doc; `--key` alone is left out: it names a file in curl, openssl
            // and ssh), openssl's `-pass pass:VALUE`, `-p VALUE` after a
            // `login` subcommand (`docker login -u me -p …`), and the password
            // of `user:password` after curl's `-u`/`--user`.
            Rule::CommandLine => concat!(
                r#"(?:^|[ \t])(?:"#,
                r#"--(?:[A-Za-z0-9-]*-)?(?i-u:password|passwd|passphrase|secret|token|credentials?|pass|pwd|auth)"#,
                r#"|--[A-Za-z0-9-]*[A-Za-z0-9]-(?i-u:key)"#,
                r#")[ \t]+"#,
                option_value!(),
                r#"|(?:^|[ \t])-pass(?:in|out)?[ \t]+pass:(\S+)"#,
                r#"|(?:^|[ \t])login[ \t](?:.*?[ \t])?-p[ \t]+"#,
                option_value!(),
                r#"|(?i-u:\bcurl\b).*?[ \t](?:-u[ \t]*|--user[ \t=]+)["']?[^\s:"']*:([^\s"']+)"#,
            ),
            // Never compiled: found by hand, see `redact::url_credential_spans`.
            Rule::UrlCredentials => "",
            // Only where a block starts: the block's extent is found by
            // `Batch`, which also looks for `PEM_END`.
            Rule::PrivateKey => r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----",
        }
    }
}

// The patterns are constants, covered by the unit tests: failing to compile is a
// bug to catch at the first line, not a runtime condition.
#[allow(clippy::expect_used)]
pub(super) static PATTERN_REGEXES: LazyLock<[Regex; 11]> = LazyLock::new(|| {
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
    pub(super) rules: RuleSet,
    /// The rule's regex is case-sensitive here, so a match of the
    /// case-insensitive automaton must be confirmed.
    pub(super) exact_case: bool,
    pub(super) check: Check,
}

/// A further cheap look at the bytes after a trigger, for triggers common in plain
/// lines.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Check {
    None,
    /// `://` is in every URL; credentials need an `@` before the next blank.
    AtSignFollows,
    /// A short name (`key`, `pass`, `pwd`, `auth`) is the last part of a name,
    /// so what follows it is `=`, `:`, a quote or a blank: not `keyboard`,
    /// `passed`, `author`.
    NameEnds,
}

impl Trigger {
    pub(super) fn worth_running(&self, hay: &[u8], trigger_end: usize) -> bool {
        let rest = hay.get(trigger_end..).unwrap_or_default();
        match self.check {
            Check::None => true,
            Check::AtSignFollows => rest
                .iter()
                .take_while(|byte| !byte.is_ascii_whitespace())
                .any(|&byte| byte == b'@'),
            Check::NameEnds => matches!(
                rest.first(),
                Some(b'=' | b':' | b'"' | b'\'' | b' ' | b'\t')
            ),
        }
    }
}

const fn trigger(text: &'static str, rules: RuleSet, exact_case: bool, check: Check) -> Trigger {
    Trigger {
        text,
        rules,
        exact_case,
        check,
    }
}

const fn exact(text: &'static str, rule: Rule) -> Trigger {
    trigger(text, RuleSet::of(rule), true, Check::None)
}

const fn any_case(text: &'static str, rule: Rule) -> Trigger {
    trigger(text, RuleSet::of(rule), false, Check::None)
}

/// Names of secrets, in `name=value` and in command-line options.
const SECRET_NAME: RuleSet = RuleSet::of(Rule::KeyValue).with(Rule::CommandLine);

const fn strong_name(text: &'static str) -> Trigger {
    trigger(text, SECRET_NAME, false, Check::None)
}

const fn short_name(text: &'static str) -> Trigger {
    trigger(text, SECRET_NAME, false, Check::NameEnds)
}

pub(super) const TRIGGERS: &[Trigger] = &[
    exact("AKIA", Rule::AwsKeyId),
    exact("ASIA", Rule::AwsKeyId),
    exact("ABIA", Rule::AwsKeyId),
    exact("ACCA", Rule::AwsKeyId),
    any_case("ghp_", Rule::GitHubToken),
    any_case("gho_", Rule::GitHubToken),
    any_case("ghu_", Rule::GitHubToken),
    any_case("ghs_", Rule::GitHubToken),
    any_case("ghr_", Rule::GitHubToken),
    any_case("github_pat_", Rule::GitHubToken),
    any_case("glpat-", Rule::GitLabToken),
    any_case("gldt-", Rule::GitLabToken),
    any_case("glrt-", Rule::GitLabToken),
    any_case("glptt-", Rule::GitLabToken),
    any_case("glcbt-", Rule::GitLabToken),
    any_case("gloas-", Rule::GitLabToken),
    any_case("glsoat-", Rule::GitLabToken),
    any_case("glft-", Rule::GitLabToken),
    any_case("glimt-", Rule::GitLabToken),
    any_case("glagent-", Rule::GitLabToken),
    any_case("xoxa-", Rule::SlackToken),
    any_case("xoxb-", Rule::SlackToken),
    any_case("xoxp-", Rule::SlackToken),
    any_case("xoxo-", Rule::SlackToken),
    any_case("xoxs-", Rule::SlackToken),
    any_case("xoxr-", Rule::SlackToken),
    any_case("xoxe-", Rule::SlackToken),
    any_case("xoxe.", Rule::SlackToken),
    any_case("xapp-", Rule::SlackToken),
    any_case("hooks.slack.com/services/", Rule::SlackWebhook),
    exact("sk_live_", Rule::StripeKey),
    exact("sk_test_", Rule::StripeKey),
    exact("rk_live_", Rule::StripeKey),
    exact("rk_test_", Rule::StripeKey),
    exact("whsec_", Rule::StripeKey),
    exact("eyJ", Rule::Jwt),
    any_case("bearer", Rule::Bearer),
    any_case("authorization", Rule::Authorization),
    strong_name("password"),
    strong_name("passwd"),
    strong_name("passphrase"),
    strong_name("secret"),
    strong_name("token"),
    strong_name("credential"),
    strong_name("api_key"),
    strong_name("apikey"),
    strong_name("api-key"),
    short_name("key"),
    short_name("pass"),
    short_name("pwd"),
    short_name("auth"),
    any_case("login", Rule::CommandLine),
    any_case("curl", Rule::CommandLine),
    trigger(
        "://",
        RuleSet::of(Rule::UrlCredentials),
        true,
        Check::AtSignFollows,
    ),
    exact("-----BEGIN ", Rule::PrivateKey),
];

/// A set of [`Rule`]s, one bit each.
#[derive(Clone, Copy)]
pub(super) struct RuleSet(u16);

impl RuleSet {
    pub(super) const EMPTY: Self = Self(0);
    pub(super) const ALL: Self = Self(u16::MAX);

    const fn of(rule: Rule) -> Self {
        Self(1 << rule as u16)
    }

    const fn with(self, rule: Rule) -> Self {
        Self(self.0 | Self::of(rule).0)
    }

    pub(super) fn insert_all(&mut self, rules: RuleSet) {
        self.0 |= rules.0;
    }

    pub(super) fn contains(self, rule: Rule) -> bool {
        self.0 & Self::of(rule).0 != 0
    }
}
