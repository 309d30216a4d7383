//! Operator tokens: the tokens file is read once at start, each token is
//! hashed with SHA-256, and only the hashes (with the login they name) are
//! kept. A presented token is hashed and compared against every stored hash
//! in constant time.
//!
//! The file format (documented in `docs/web.md`; `hive-core dev` writes it):
//! one entry per line, either `TOKEN` (the operator is named `operator`) or
//! `LOGIN:TOKEN`; blank lines and lines starting with `#` are ignored; a
//! token is 16 to 512 characters of `A-Z a-z 0-9 - . _ ~ + / =`.
//!
//! This module must never log, return or keep a token, nor print a line of
//! the file in an error: errors name the line number only.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Largest tokens file we read; anything bigger is not a tokens file.
pub const TOKENS_FILE_MAX: u64 = 64 * 1024;
/// Most entries in a tokens file.
pub const MAX_TOKENS: usize = 256;
/// Shortest token: 32 characters, 128 bits even if they are only hex digits.
pub const TOKEN_MIN_LEN: usize = 32;
/// Longest token.
pub const TOKEN_MAX_LEN: usize = 512;
/// Longest login name.
pub const LOGIN_MAX_LEN: usize = 64;
/// The operator a bare `TOKEN` line names.
pub const DEFAULT_LOGIN: &str = "operator";

/// Why the tokens file was refused.
#[derive(Debug, thiserror::Error)]
pub enum TokenFileError {
    #[error("cannot read the tokens file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the tokens file {path} is larger than {TOKENS_FILE_MAX} bytes")]
    TooLarge { path: PathBuf },
    #[error("the tokens file {path} is readable or writable by group or others (mode {mode:o}); make it 0600 or 0400")]
    Exposed { path: PathBuf, mode: u32 },
    #[error(
        "the tokens file {path} is owned by uid {owner}, not by the gateway's own user; chown it"
    )]
    ForeignOwner { path: PathBuf, owner: u32 },
    #[error("the tokens file is not UTF-8")]
    NotUtf8,
    #[error("tokens file line {line}: a token must be {TOKEN_MIN_LEN} to {TOKEN_MAX_LEN} characters of A-Z a-z 0-9 - . _ ~ + / =")]
    BadToken { line: usize },
    #[error("tokens file line {line}: a login must be 1 to {LOGIN_MAX_LEN} characters of a-z 0-9 . _ @ - starting with a letter")]
    BadLogin { line: usize },
    #[error("tokens file line {line}: this token appears twice")]
    Duplicate { line: usize },
    #[error("the tokens file has more than {MAX_TOKENS} tokens")]
    TooMany,
    #[error("the tokens file holds no token, so nobody could log in")]
    Empty,
}

/// The hashes of every accepted token and the login each names.
#[derive(Clone)]
pub struct TokenSet {
    entries: Vec<Entry>,
}

#[derive(Clone)]
struct Entry {
    hash: [u8; 32],
    login: String,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Hashes are not secrets in the strict sense, but nothing needs them
        // in a log either.
        f.debug_struct("TokenSet")
            .field("tokens", &self.entries.len())
            .finish()
    }
}

impl TokenSet {
    /// Reads and parses the tokens file at `path`. The file must be owned by
    /// one of `owners` (the gateway's own uid, and the user it will become)
    /// and have no permission bit for group or others: a token anyone else
    /// can read or rewrite is not the gateway's credential.
    pub fn load(path: &Path, owners: &[u32]) -> Result<Self, TokenFileError> {
        let read_err = |source| TokenFileError::Read {
            path: path.to_owned(),
            source,
        };
        let file = File::open(path).map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        if meta.len() > TOKENS_FILE_MAX {
            return Err(TokenFileError::TooLarge {
                path: path.to_owned(),
            });
        }
        if meta.mode() & 0o077 != 0 {
            return Err(TokenFileError::Exposed {
                path: path.to_owned(),
                mode: meta.mode() & 0o7777,
            });
        }
        if !owners.contains(&meta.uid()) {
            return Err(TokenFileError::ForeignOwner {
                path: path.to_owned(),
                owner: meta.uid(),
            });
        }
        let mut bytes = Vec::new();
        // Read one byte past the limit so a file that grew since the stat is
        // still refused.
        file.take(TOKENS_FILE_MAX + 1)
            .read_to_end(&mut bytes)
            .map_err(read_err)?;
        if bytes.len() as u64 > TOKENS_FILE_MAX {
            return Err(TokenFileError::TooLarge {
                path: path.to_owned(),
            });
        }
        let text = String::from_utf8(bytes).map_err(|_| TokenFileError::NotUtf8)?;
        Self::parse(&text)
    }

    /// Parses the file's text. See the module header for the format.
    pub fn parse(text: &str) -> Result<Self, TokenFileError> {
        let mut entries: Vec<Entry> = Vec::new();
        for (idx, raw) in text.lines().enumerate() {
            let line = idx + 1;
            let trimmed = raw.trim();
            if trimmed.is_empty() || trimmed.starts_with('#') {
                continue;
            }
            let (login, token) = match trimmed.split_once(':') {
                Some((login, token)) => {
                    if !valid_login(login) {
                        return Err(TokenFileError::BadLogin { line });
                    }
                    (login, token)
                }
                None => (DEFAULT_LOGIN, trimmed),
            };
            if !valid_token(token) {
                return Err(TokenFileError::BadToken { line });
            }
            let hash = hash(token);
            if entries.iter().any(|e| e.hash == hash) {
                return Err(TokenFileError::Duplicate { line });
            }
            if entries.len() == MAX_TOKENS {
                return Err(TokenFileError::TooMany);
            }
            entries.push(Entry {
                hash,
                login: login.to_owned(),
            });
        }
        if entries.is_empty() {
            return Err(TokenFileError::Empty);
        }
        Ok(Self { entries })
    }

    /// The login `presented` belongs to, if it is one of the tokens. Every
    /// stored hash is compared, in constant time, whatever matches first.
    pub fn verify(&self, presented: &str) -> Option<&str> {
        if presented.is_empty() || presented.len() > TOKEN_MAX_LEN {
            return None;
        }
        let h = hash(presented);
        let mut found = None;
        for e in &self.entries {
            let eq: bool = e.hash.ct_eq(&h).into();
            if eq && found.is_none() {
                found = Some(e.login.as_str());
            }
        }
        found
    }

    /// How many tokens are loaded.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Always false for a loaded set (an empty file is refused).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

fn hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn valid_token(t: &str) -> bool {
    (TOKEN_MIN_LEN..=TOKEN_MAX_LEN).contains(&t.len())
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
}

/// A login is what the audit log records, so it is kept to a plain,
/// printable alphabet.
pub fn valid_login(l: &str) -> bool {
    let mut bytes = l.bytes();
    matches!(bytes.next(), Some(b) if b.is_ascii_lowercase())
        && l.len() <= LOGIN_MAX_LEN
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._@-".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T1: &str = "0123456789abcdef0123456789abcdef";
    const T2: &str = "ZZZZZZZZZZZZZZZZ-ZZZZ_ZZZZ-ZZZZZZ";

    #[test]
    fn bare_and_named_tokens_and_comments() {
        let set = TokenSet::parse(&format!("# dev token\n\n{T1}\nalice:{T2}\n")).unwrap();
        assert_eq!(set.len(), 2);
        assert_eq!(set.verify(T1), Some(DEFAULT_LOGIN));
        assert_eq!(set.verify(T2), Some("alice"));
        assert_eq!(set.verify("0123456789abcdef0123456789abcdeX"), None);
        assert_eq!(set.verify(""), None);
    }

    #[test]
    fn errors_name_the_line_and_never_the_token() {
        let err = TokenSet::parse("# c\nshort\n").unwrap_err();
        assert!(matches!(err, TokenFileError::BadToken { line: 2 }));
        assert!(!err.to_string().contains("short"));
        let err = TokenSet::parse(&format!("Bad Login:{T1}")).unwrap_err();
        assert!(matches!(err, TokenFileError::BadLogin { line: 1 }));
        let err = TokenSet::parse(&format!("{T1}\nbob:{T1}")).unwrap_err();
        assert!(matches!(err, TokenFileError::Duplicate { line: 2 }));
        assert!(matches!(
            TokenSet::parse("# only comments\n").unwrap_err(),
            TokenFileError::Empty
        ));
    }

    fn me() -> u32 {
        nix::unistd::geteuid().as_raw()
    }

    fn private_file(dir: &Path, text: &[u8]) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("tokens");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    #[test]
    fn the_file_is_read_with_a_size_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = private_file(dir.path(), format!("{T1}\n").as_bytes());
        assert_eq!(
            TokenSet::load(&path, &[me()]).unwrap().verify(T1),
            Some("operator")
        );
        let path = private_file(dir.path(), &vec![b'#'; TOKENS_FILE_MAX as usize + 1]);
        assert!(matches!(
            TokenSet::load(&path, &[me()]).unwrap_err(),
            TokenFileError::TooLarge { .. }
        ));
    }

    #[test]
    fn a_tokens_file_open_to_group_or_others_or_owned_by_another_user_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = private_file(dir.path(), format!("{T1}\n").as_bytes());
        for mode in [0o640, 0o604, 0o644, 0o620, 0o602] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            let err = TokenSet::load(&path, &[me()]).unwrap_err();
            assert!(
                matches!(err, TokenFileError::Exposed { .. }),
                "{mode:o}: {err}"
            );
            assert!(
                err.to_string().contains("0600"),
                "one sentence saying what to do: {err}"
            );
        }
        for mode in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            assert!(TokenSet::load(&path, &[me()]).is_ok(), "{mode:o}");
        }
        // The file is ours, but the gateway runs as someone else.
        let err = TokenSet::load(&path, &[me().wrapping_add(1)]).unwrap_err();
        assert!(
            matches!(err, TokenFileError::ForeignOwner { owner, .. } if owner == me()),
            "{err}"
        );
    }

    #[test]
    fn tokens_shorter_than_32_characters_are_refused() {
        // 31 hex characters are 124 bits: refused; 32 are 128: accepted.
        let short = &T1[..31];
        assert!(matches!(
            TokenSet::parse(short).unwrap_err(),
            TokenFileError::BadToken { line: 1 }
        ));
        assert!(matches!(
            TokenSet::parse(&format!("alice:{short}")).unwrap_err(),
            TokenFileError::BadToken { line: 1 }
        ));
        assert!(TokenSet::parse(T1).is_ok());
    }

    #[test]
    fn debug_output_shows_no_hash() {
        let set = TokenSet::parse(T1).unwrap();
        assert_eq!(format!("{set:?}"), "TokenSet { tokens: 1 }");
    }
}
