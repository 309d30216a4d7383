//! Browser sessions: a random 32-byte id in an `HttpOnly; SameSite=Strict`
//! cookie, mapped in memory to the operator it belongs to, its per-session
//! form (CSRF) token and a one-shot flash message.
//!
//! The map is keyed by the SHA-256 of the id, so looking a session up never
//! compares the secret itself byte by byte. Sessions live only in memory: a
//! gateway restart logs everyone out, which is the safe failure.
//!
//! A session also owns the event streams it opened: at most
//! [`MAX_STREAMS_PER_SESSION`], and all of them end when it does
//! ([`SessionStore::open_stream`]).
//!
//! This module must never log or return a session id once the cookie is
//! built, and never accept an id it did not mint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
// tokio's clock (std's outside a paused test runtime), so tests can move
// time past an idle timeout without waiting for it.
use tokio::time::Instant;

/// The session cookie's name over plain HTTP (loopback development).
pub const COOKIE_NAME: &str = "hive_session";
/// The session cookie's name behind TLS (`tailscale serve` or another
/// loopback proxy saying `https`): the `__Host-` prefix makes the browser
/// refuse it unless it is `Secure`, `Path=/` and has no `Domain`, so neither
/// a sibling subdomain nor a plain-HTTP page can plant one.
pub const SECURE_COOKIE_NAME: &str = "__Host-hive_session";

/// The cookie name for a transport.
pub fn cookie_name(secure: bool) -> &'static str {
    if secure {
        SECURE_COOKIE_NAME
    } else {
        COOKIE_NAME
    }
}
/// Random bytes in a session id and in a form token.
pub const SESSION_ID_BYTES: usize = 32;
/// A session unused for this long is gone.
pub const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(12 * 3600);
/// A session older than this is gone however busy it is.
pub const SESSION_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);
/// Most sessions held at once; the least recently used goes first.
pub const MAX_SESSIONS: usize = 1024;
/// Most event streams one session may hold open (a few tabs).
pub const MAX_STREAMS_PER_SESSION: usize = 4;

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
    /// One permit per open event stream.
    streams: Arc<Semaphore>,
    /// Dropped with the session; every stream it opened watches it and ends.
    ended: watch::Sender<()>,
}

impl Session {
    fn expires_at(&self) -> Instant {
        (self.last_seen + SESSION_IDLE_TIMEOUT).min(self.created + SESSION_MAX_AGE)
    }

    fn expired(&self, now: Instant) -> bool {
        now > self.expires_at()
    }
}

/// What an event stream of a session holds: its slot among the session's
/// [`MAX_STREAMS_PER_SESSION`], and a watch that closes when the session
/// ends (logout, expiry or eviction).
pub struct SessionStream {
    pub permit: OwnedSemaphorePermit,
    pub ended: watch::Receiver<()>,
}

/// Why a session may not open another event stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamRefusal {
    /// The session has ended.
    Gone,
    /// It already holds [`MAX_STREAMS_PER_SESSION`].
    TooMany,
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
                streams: Arc::new(Semaphore::new(MAX_STREAMS_PER_SESSION)),
                ended: watch::channel(()).0,
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

    /// Ends a session, and with it every event stream it opened.
    pub fn remove(&self, key: &[u8; 32]) {
        self.lock().remove(key);
    }

    /// A slot for one more event stream of the session `key`.
    pub fn open_stream(&self, key: &[u8; 32]) -> Result<SessionStream, StreamRefusal> {
        let now = Instant::now();
        let mut map = self.lock();
        let session = map.get(key).ok_or(StreamRefusal::Gone)?;
        if session.expired(now) {
            map.remove(key);
            return Err(StreamRefusal::Gone);
        }
        let permit = session
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| StreamRefusal::TooMany)?;
        Ok(SessionStream {
            permit,
            ended: session.ended.subscribe(),
        })
    }

    /// When the session `key` expires if nothing uses it; `None` (and the
    /// session is removed) once it has. Does not count as use.
    pub fn expires_at(&self, key: &[u8; 32]) -> Option<Instant> {
        let now = Instant::now();
        let mut map = self.lock();
        let at = map.get(key)?.expires_at();
        if now > at {
            map.remove(key);
            return None;
        }
        Some(at)
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
    fn a_session_holds_a_few_streams_and_ending_it_ends_them() {
        let store = SessionStore::new();
        let (_, info) = store.create("ops");
        let mut open: Vec<_> = (0..MAX_STREAMS_PER_SESSION)
            .map(|_| store.open_stream(&info.key).unwrap())
            .collect();
        assert_eq!(
            store.open_stream(&info.key).err(),
            Some(StreamRefusal::TooMany)
        );
        open.pop();
        let last = store.open_stream(&info.key).unwrap();
        assert!(
            last.ended.has_changed().is_ok(),
            "open while the session lives"
        );
        store.remove(&info.key);
        assert!(last.ended.has_changed().is_err(), "closed with the session");
        assert_eq!(
            store.open_stream(&info.key).err(),
            Some(StreamRefusal::Gone)
        );
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
