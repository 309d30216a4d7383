//! Browser sessions: a random 32-byte id in an `HttpOnly; SameSite=Strict`
//! cookie, mapped in memory to the operator it belongs to, its per-session
//! form (CSRF) token and a one-shot flash message.
//!
//! The map is keyed by the SHA-256 of the id, so looking a session up never
//! compares the secret itself byte by byte. Sessions live only in memory: a
//! gateway restart logs everyone out, which is the safe failure.
//!
//! This module must never log or return a session id once the cookie is
//! built, and never accept an id it did not mint.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// The session cookie's name.
pub const COOKIE_NAME: &str = "hive_session";
/// Random bytes in a session id and in a form token.
pub const SESSION_ID_BYTES: usize = 32;
/// A session unused for this long is gone.
pub const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
/// A session older than this is gone however busy it is.
pub const SESSION_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most sessions held at once; the least recently used goes first.
pub const MAX_SESSIONS: usize = 1024;

/// Something to show once on the next page (the result of a form POST).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flash {
    pub ok: bool,
    pub text: String,
}

/// What a handler learns about the caller's session.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    /// The SHA-256 of the cookie value: the map key, safe to hold.
    pub key: [u8; 32],
    pub operator: String,
    /// The form token every POST must carry.
    pub csrf: String,
}

struct Session {
    operator: String,
    csrf: String,
    created: Instant,
    last_seen: Instant,
    flash: Option<Flash>,
}

impl Session {
    fn expired(&self, now: Instant) -> bool {
        now.duration_since(self.last_seen) > SESSION_IDLE_TIMEOUT
            || now.duration_since(self.created) > SESSION_MAX_AGE
    }
}

/// Every live session.
#[derive(Default)]
pub struct SessionStore {
    map: Mutex<HashMap<[u8; 32], Session>>,
}

impl SessionStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Starts a session for `operator`. Returns the cookie value (the only
    /// copy of the id) and the session's info.
    pub fn create(&self, operator: &str) -> (String, SessionInfo) {
        let id = random_token();
        let key = key_of(&id);
        let csrf = random_token();
        let now = Instant::now();
        let mut map = self.lock();
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| !s.expired(now));
        }
        if map.len() >= MAX_SESSIONS {
            if let Some(oldest) = map.iter().min_by_key(|(_, s)| s.last_seen).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        map.insert(
            key,
            Session {
                operator: operator.to_owned(),
                csrf: csrf.clone(),
                created: now,
                last_seen: now,
                flash: None,
            },
        );
        let info = SessionInfo {
            key,
            operator: operator.to_owned(),
            csrf,
        };
        (id, info)
    }

    /// The live session whose cookie value is `id`, if any; refreshes its
    /// idle timer.
    pub fn lookup(&self, id: &str) -> Option<SessionInfo> {
        if id.len() > 2 * SESSION_ID_BYTES {
            return None;
        }
        let key = key_of(id);
        let now = Instant::now();
        let mut map = self.lock();
        let session = map.get_mut(&key)?;
        if session.expired(now) {
            map.remove(&key);
            return None;
        }
        session.last_seen = now;
        Some(SessionInfo {
            key,
            operator: session.operator.clone(),
            csrf: session.csrf.clone(),
        })
    }

    /// Ends a session.
    pub fn remove(&self, key: &[u8; 32]) {
        self.lock().remove(key);
    }

    /// Leaves `flash` for the session's next page.
    pub fn set_flash(&self, key: &[u8; 32], flash: Flash) {
        if let Some(s) = self.lock().get_mut(key) {
            s.flash = Some(flash);
        }
    }

    /// Takes the session's flash, if one is waiting.
    pub fn take_flash(&self, key: &[u8; 32]) -> Option<Flash> {
        self.lock().get_mut(key)?.flash.take()
    }

    /// How many sessions exist (for metrics).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<[u8; 32], Session>> {
        // Every operation is one insert, remove or field write, so a panic
        // elsewhere cannot leave the map half-updated.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A fresh random token: 32 bytes from the thread-local CSPRNG (ChaCha,
/// seeded and reseeded from the OS), URL-safe base64.
pub fn random_token() -> String {
    let mut bytes = [0u8; SESSION_ID_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn key_of(id: &str) -> [u8; 32] {
    Sha256::digest(id.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_created_session_is_found_by_its_cookie_only() {
        let store = SessionStore::new();
        let (id, info) = store.create("ops");
        assert_eq!(id.len(), 43);
        let found = store.lookup(&id).unwrap();
        assert_eq!(found.operator, "ops");
        assert_eq!(found.csrf, info.csrf);
        assert_ne!(found.csrf, id);
        assert!(store.lookup("not-a-session").is_none());
        store.remove(&info.key);
        assert!(store.lookup(&id).is_none());
    }

    #[test]
    fn flash_is_shown_once() {
        let store = SessionStore::new();
        let (_, info) = store.create("ops");
        store.set_flash(
            &info.key,
            Flash {
                ok: true,
                text: "sent".into(),
            },
        );
        assert_eq!(store.take_flash(&info.key).unwrap().text, "sent");
        assert!(store.take_flash(&info.key).is_none());
    }

    #[test]
    fn the_store_is_bounded() {
        let store = SessionStore::new();
        let (first, _) = store.create("ops");
        for _ in 0..MAX_SESSIONS {
            store.create("ops");
        }
        assert_eq!(store.len(), MAX_SESSIONS);
        assert!(store.lookup(&first).is_none(), "the oldest was evicted");
    }
}
