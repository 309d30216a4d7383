//! Validated names and paths. An [`AgentName`] or a [`RelPath`] can only be
//! built through its checking constructor (and serde goes through it too), so
//! any value of these types that reaches the core is already safe to join to a
//! path or to use as a key. This module must never grow an unchecked
//! constructor.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Longest agent name: one letter plus thirty more characters.
pub const AGENT_NAME_MAX: usize = 31;

/// Names that mean something else on the wire and so can never be agents.
pub const RESERVED_NAMES: &[&str] = &["operator", "hive", "all"];

/// Longest relative path accepted for a state file, in bytes.
pub const REL_PATH_MAX: usize = 4096;

/// Why a name or path was refused. The messages are shown to whoever sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("agent name is empty")]
    Empty,
    #[error("agent name is longer than {AGENT_NAME_MAX} characters")]
    TooLong,
    #[error("agent name must start with a lowercase letter")]
    BadStart,
    #[error("agent name may contain only a-z, 0-9 and '-'")]
    BadChar,
    #[error("'{0}' is reserved and cannot name an agent")]
    Reserved(String),
    #[error("path is empty")]
    EmptyPath,
    #[error("path is longer than {REL_PATH_MAX} bytes")]
    PathTooLong,
    #[error("path must be relative")]
    Absolute,
    #[error("path may not contain '..'")]
    DotDot,
    #[error("path may not contain NUL")]
    Nul,
    #[error(
        "secret name must be 1 to {SECRET_KEY_MAX} characters of A-Z, a-z, 0-9, '_', '-', '.', \
         not starting with '.' or '-'"
    )]
    BadSecretKey,
}

/// Longest secret name.
pub const SECRET_KEY_MAX: usize = 64;

/// The name of an agent's secret (`anthropic`, `GITHUB_TOKEN`): 1 to
/// [`SECRET_KEY_MAX`] characters of `A-Za-z0-9_.-`, not starting with `.`
/// or `-`. It is a file name under the secrets store and under
/// `/run/secrets` in the container, which is why nothing else is allowed
/// (no `/`, no `.` or `..`).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretKey(String);

impl SecretKey {
    /// Checks `s` and returns it as a secret name, or says why it is not one.
    pub fn new(s: &str) -> Result<Self, NameError> {
        let ok = !s.is_empty()
            && s.len() <= SECRET_KEY_MAX
            && !s.starts_with(['.', '-'])
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::BadSecretKey)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl FromStr for SecretKey {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl Serialize for SecretKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SecretKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        SecretKey::new(&s).map_err(serde::de::Error::custom)
    }
}

/// An agent's name: `[a-z][a-z0-9-]{0,30}`, and not one of [`RESERVED_NAMES`].
/// The name is also the container's (`h-<name>`) and a directory name, which
/// is why nothing else is allowed.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentName(String);

impl AgentName {
    /// Checks `s` and returns it as a name, or says why it is not one.
    pub fn new(s: &str) -> Result<Self, NameError> {
        let mut chars = s.chars();
        let first = chars.next().ok_or(NameError::Empty)?;
        if s.len() > AGENT_NAME_MAX {
            return Err(NameError::TooLong);
        }
        if !first.is_ascii_lowercase() {
            return Err(NameError::BadStart);
        }
        if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-') {
            return Err(NameError::BadChar);
        }
        if RESERVED_NAMES.contains(&s) {
            return Err(NameError::Reserved(s.to_owned()));
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for AgentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl FromStr for AgentName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl AsRef<str> for AgentName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for AgentName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AgentName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        AgentName::new(&s).map_err(serde::de::Error::custom)
    }
}

/// Where a message or question goes: one agent, the operator, or (for
/// `send` only) every agent the sender's policy allows. On the wire it is the
/// plain string `"operator"`, `"*"` or an agent name.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub enum Recipient {
    Operator,
    All,
    Agent(AgentName),
}

impl Recipient {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        match s {
            "operator" => Ok(Self::Operator),
            "*" => Ok(Self::All),
            other => AgentName::new(other).map(Self::Agent),
        }
    }
}

impl fmt::Display for Recipient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Operator => f.write_str("operator"),
            Self::All => f.write_str("*"),
            Self::Agent(n) => f.write_str(n.as_str()),
        }
    }
}

impl FromStr for Recipient {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for Recipient {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Recipient {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Recipient::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A path relative to an agent's state dir: non-empty, not absolute, no `..`
/// component, no NUL, at most [`REL_PATH_MAX`] bytes. This is a first filter
/// only: the core still resolves it with `openat2(RESOLVE_BENEATH)`, because
/// the agent owns the directory and can plant symlinks in it.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(String);

impl RelPath {
    pub fn new(s: &str) -> Result<Self, NameError> {
        if s.is_empty() {
            return Err(NameError::EmptyPath);
        }
        if s.len() > REL_PATH_MAX {
            return Err(NameError::PathTooLong);
        }
        if s.contains('\0') {
            return Err(NameError::Nul);
        }
        if s.starts_with('/') {
            return Err(NameError::Absolute);
        }
        if s.split('/').any(|c| c == "..") {
            return Err(NameError::DotDot);
        }
        Ok(Self(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl Serialize for RelPath {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for RelPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        RelPath::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn secret_keys_are_plain_file_names() {
        for good in ["anthropic", "GITHUB_TOKEN", "a.b-c_1", "9"] {
            assert!(SecretKey::new(good).is_ok(), "{good}");
        }
        let long = "k".repeat(SECRET_KEY_MAX + 1);
        for bad in [
            "",
            ".",
            "..",
            ".env",
            "-x",
            "a/b",
            "a b",
            "a\0",
            "é",
            long.as_str(),
        ] {
            assert_eq!(SecretKey::new(bad), Err(NameError::BadSecretKey), "{bad:?}");
        }
        let k: SecretKey = serde_json::from_str("\"key\"").unwrap();
        assert_eq!(k.as_str(), "key");
        assert!(serde_json::from_str::<SecretKey>("\"../x\"").is_err());
    }

    #[test]
    fn agent_names() {
        for good in ["a", "alice", "a-1", "x23456789012345678901234567890z"] {
            assert!(AgentName::new(good).is_ok(), "{good}");
        }
        let bad = [
            ("", NameError::Empty),
            ("Alice", NameError::BadStart),
            ("1a", NameError::BadStart),
            ("-a", NameError::BadStart),
            ("a/b", NameError::BadChar),
            ("a.b", NameError::BadChar),
            ("..", NameError::BadStart),
            ("a b", NameError::BadChar),
            ("x234567890123456789012345678901z", NameError::TooLong),
            ("operator", NameError::Reserved("operator".into())),
        ];
        for (s, e) in bad {
            assert_eq!(AgentName::new(s), Err(e), "{s:?}");
        }
    }

    #[test]
    fn rel_paths() {
        for good in ["a", "notes/today.md", "a/./b", ".hidden", "a..b"] {
            assert!(RelPath::new(good).is_ok(), "{good}");
        }
        let bad = [
            ("", NameError::EmptyPath),
            ("/etc/shadow", NameError::Absolute),
            ("..", NameError::DotDot),
            ("a/../../b", NameError::DotDot),
            ("a/..", NameError::DotDot),
            ("a\0b", NameError::Nul),
        ];
        for (s, e) in bad {
            assert_eq!(RelPath::new(s), Err(e), "{s:?}");
        }
    }

    #[test]
    fn serde_goes_through_the_check() {
        assert!(serde_json::from_str::<AgentName>("\"../x\"").is_err());
        assert!(serde_json::from_str::<RelPath>("\"/x\"").is_err());
        assert_eq!(
            serde_json::from_str::<Recipient>("\"*\"").unwrap(),
            Recipient::All
        );
        let bytes = postcard::to_stdvec(&"a/b").unwrap();
        assert!(postcard::from_bytes::<AgentName>(&bytes).is_err());
    }

    proptest! {
        #[test]
        fn any_accepted_name_matches_the_grammar(s in "\\PC{0,40}") {
            if let Ok(n) = AgentName::new(&s) {
                let b = n.as_str().as_bytes();
                prop_assert!(b.len() <= AGENT_NAME_MAX && b[0].is_ascii_lowercase());
                prop_assert!(b.iter().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-'));
            }
        }

        #[test]
        fn any_accepted_path_stays_relative(s in "[a-z./\\x00]{0,20}") {
            if let Ok(p) = RelPath::new(&s) {
                prop_assert!(!p.as_str().starts_with('/'));
                prop_assert!(p.as_str().split('/').all(|c| c != ".."));
            }
        }
    }
}
