//! Who may see the dashboard: a login with `ETRACKER_ADMIN_USER` /
//! `ETRACKER_ADMIN_PASSWORD` (or the admin token as the password), a
//! session cookie, a CSRF token per session, and a limit on wrong guesses.
//!
//! - Sessions live in the store, so that every replica knows them, a
//!   restart keeps them and a logout ends them everywhere; they end after
//!   [`SESSION_SECS`] or at logout. The cookie holds 32 random bytes; the
//!   store keeps only their SHA-256, so reading it (or a backup) does not
//!   hand out live sessions.
//! - The cookie is `HttpOnly`, `SameSite=Strict`, `Path=/admin`, and
//!   `Secure` when the request came over https (a proxy in front says so
//!   with `X-Forwarded-Proto: https`).
//! - Every form carries a CSRF token: the session's for forms behind the
//!   login, and for the login form itself one set in a cookie with the form
//!   (double submit), so a page elsewhere cannot log a browser in either.
//! - Wrong logins are limited so that a stranger cannot lock the operators
//!   out, and many addresses do not buy an attacker many guesses. A browser
//!   that logged in once carries a **device cookie** (a random id with its
//!   HMAC under a key made from the credentials, so it is void once they
//!   change): its logins count only against itself ([`MAX_FAILURES`] in
//!   [`FAILURE_WINDOW_SECS`]). Every other login counts against its address
//!   (an IPv6 client by its /64) and against one budget shared by all
//!   addresses ([`MAX_UNKNOWN_FAILURES`] per window): past either, logins
//!   without a device cookie wait (429) while operators with one log in as
//!   usual. A proxy in front makes every caller one address: the device
//!   cookie still tells operators apart. The counts are per process: N
//!   replicas behind one balancer allow N times the guesses.
//! - The admin token (`Authorization: Bearer`) also opens the JSON API, for
//!   scripts and the CLI; no cookie, so no CSRF exposure.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{header, HeaderMap};
use rand_core::{OsRng, RngCore};
use sha2::{Digest, Sha256};

use crate::store::{Store, StoredSession};

/// Seconds a session lasts.
pub const SESSION_SECS: u64 = 12 * 3600;
/// Wrong logins one address may make per window.
pub const MAX_FAILURES: u32 = 5;
/// The window of the failure counts, seconds.
pub const FAILURE_WINDOW_SECS: u64 = 300;
/// Wrong logins without a device cookie, over all addresses, per window.
pub const MAX_UNKNOWN_FAILURES: u32 = 30;

/// The cookie of a browser that logged in before.
pub const DEVICE_COOKIE: &str = "etracker_device";
/// How long a device cookie lasts, seconds.
pub const DEVICE_SECS: u64 = 180 * 86_400;

/// The session cookie.
pub const SESSION_COOKIE: &str = "etracker_session";
/// The login form's CSRF cookie.
pub const LOGIN_COOKIE: &str = "etracker_login";

/// The credentials the dashboard accepts.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// `ETRACKER_ADMIN_USER` and `ETRACKER_ADMIN_PASSWORD`.
    pub user_password: Option<(String, String)>,
    /// `ETRACKER_ADMIN_TOKEN`, accepted as the password of any user name.
    pub token: Option<String>,
}

impl Credentials {
    /// Whether any login can succeed.
    pub fn configured(&self) -> bool {
        self.user_password.is_some() || self.token.is_some()
    }

    /// Whether `user` / `password` log in. Both comparisons always run, in
    /// constant time, so timing tells nothing about which part was wrong.
    fn check(&self, user: &str, password: &str) -> bool {
        let by_password = self.user_password.as_ref().is_some_and(|(u, p)| {
            let user_ok = constant_time_eq(user.as_bytes(), u.as_bytes());
            let password_ok = constant_time_eq(password.as_bytes(), p.as_bytes());
            user_ok & password_ok
        });
        let by_token = self
            .token
            .as_ref()
            .is_some_and(|t| constant_time_eq(password.as_bytes(), t.as_bytes()));
        by_password | by_token
    }

    /// A digest of these credentials: a session opened under others (the
    /// password or token changed since) is over.
    pub fn fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(b"etracker dashboard credentials\0");
        if let Some((user, password)) = &self.user_password {
            hash.update((user.len() as u64).to_be_bytes());
            hash.update(user.as_bytes());
            hash.update((password.len() as u64).to_be_bytes());
            hash.update(password.as_bytes());
        }
        hash.update(b"\0token\0");
        if let Some(token) = &self.token {
            hash.update(token.as_bytes());
        }
        hex::encode(&hash.finalize()[..16])
    }

    /// Whether the request carries the admin token as a bearer token.
    pub fn bearer(&self, headers: &HeaderMap) -> bool {
        self.token
            .as_ref()
            .is_some_and(|token| bearer_is(headers, token))
    }
}

/// Whether the request's `Authorization: Bearer` is `token` (compared in
/// constant time).
pub fn bearer_is(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|given| constant_time_eq(given.as_bytes(), token.as_bytes()))
}

/// Equality of secrets that takes the same time wherever they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |diff, (x, y)| diff | (x ^ y)) == 0
}

/// A logged-in browser.
#[derive(Clone, Debug)]
pub struct Session {
    /// Who logged in.
    pub user: String,
    /// The token every form of this session must carry.
    pub csrf: String,
}

/// What a login attempt came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Login {
    /// Logged in: the new session's cookie value, and the device cookie's.
    Session {
        /// The session cookie.
        session: String,
        /// The device cookie (the one presented, when it was valid).
        device: String,
    },
    /// Wrong user or password (counted).
    Refused,
    /// Too many wrong logins lately: try again after this many seconds.
    Limited(u64),
    /// The form's CSRF token does not match its cookie.
    Forged,
    /// The store could not keep the session: try again later.
    Unavailable,
}

/// The dashboard's logins: credentials, sessions (in the store) and this
/// process's counts of wrong guesses.
pub struct Sessions {
    credentials: Credentials,
    store: Arc<dyn Store>,
    failures: Mutex<Failures>,
}

/// Wrong logins since each window started: per client (address, or /64)
/// and over all of them for logins without a device cookie; per device
/// for the others.
#[derive(Debug, Default)]
struct Failures {
    by_client: HashMap<IpAddr, (Instant, u32)>,
    unknown: Option<(Instant, u32)>,
    by_device: HashMap<String, (Instant, u32)>,
}

/// Who a login counts against.
#[derive(Clone, Debug)]
enum Attempt {
    /// A browser with a valid device cookie (its id).
    Device(String),
    /// Anyone else, by client.
    Unknown(IpAddr),
}

/// Seconds left of a window that started at `start`, if `n` filled it.
fn over(entry: Option<&(Instant, u32)>, max: u32, now: Instant) -> Option<u64> {
    let (start, n) = entry?;
    let window = Duration::from_secs(FAILURE_WINDOW_SECS);
    let age = now.duration_since(*start);
    (age < window && *n >= max).then(|| (window - age).as_secs().max(1))
}

/// Counts one failure in `entry`, starting a new window when it is over.
fn count(entry: &mut (Instant, u32), now: Instant) {
    if now.duration_since(entry.0) >= Duration::from_secs(FAILURE_WINDOW_SECS) {
        *entry = (now, 0);
    }
    entry.1 += 1;
}

/// The client an address stands for: itself, or its /64 for IPv6; clients
/// of unknown address share one.
fn client(address: Option<IpAddr>) -> IpAddr {
    let Some(address) = address else {
        return IpAddr::from([0, 0, 0, 0]);
    };
    match address {
        IpAddr::V4(_) => address,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(prefix.into())
            }
        },
    }
}

impl Sessions {
    /// Sessions for `credentials`, kept in `store`.
    pub fn new(credentials: Credentials, store: Arc<dyn Store>) -> Self {
        Sessions {
            credentials,
            store,
            failures: Mutex::default(),
        }
    }

    /// The accepted credentials.
    pub fn credentials(&self) -> &Credentials {
        &self.credentials
    }

    /// A login attempt from `address` with the form's fields and the login
    /// cookie (`csrf_cookie`).
    pub async fn login(
        &self,
        address: Option<IpAddr>,
        user: &str,
        password: &str,
        csrf_field: &str,
        cookies: (Option<&str>, Option<&str>),
    ) -> Login {
        let (csrf_cookie, device_cookie) = cookies;
        let now = Instant::now();
        let attempt = match device_cookie.and_then(|c| self.device_id(c)) {
            Some(id) => Attempt::Device(id),
            None => Attempt::Unknown(client(address)),
        };
        if let Some(wait) = self.limited(&attempt, now) {
            return Login::Limited(wait);
        }
        let forged = csrf_cookie
            .is_none_or(|c| c.is_empty() || !constant_time_eq(c.as_bytes(), csrf_field.as_bytes()));
        if forged {
            return Login::Forged;
        }
        if !self.credentials.configured() || !self.credentials.check(user, password) {
            self.fail(&attempt, now);
            return Login::Refused;
        }
        let device = match (&attempt, device_cookie) {
            (Attempt::Device(_), Some(cookie)) => cookie.to_string(),
            _ => self.new_device(),
        };
        let token = random_token();
        let started_at = ucanto::ucan::now();
        let session = StoredSession {
            user: user.to_string(),
            csrf: random_token(),
            expires_at: started_at + SESSION_SECS,
            started_at,
            credentials: self.credentials.fingerprint(),
        };
        let id = digest(&token);
        match crate::store::blocking(self.store.clone(), move |s| s.put_session(&id, &session))
            .await
        {
            Ok(()) => Login::Session {
                session: token,
                device,
            },
            Err(e) => {
                tracing::error!(error = %e, "dashboard: cannot keep a session");
                Login::Unavailable
            }
        }
    }

    /// The live session of the request's session cookie (none when the
    /// store cannot say: the page then asks to log in).
    pub async fn session(&self, headers: &HeaderMap) -> Option<Session> {
        let id = digest(cookie(headers, SESSION_COOKIE)?);
        let now = ucanto::ucan::now();
        match crate::store::blocking(self.store.clone(), move |s| s.session(&id, now)).await {
            // A session opened under other credentials is over.
            Ok(found) => found
                .filter(|s| s.credentials == self.credentials.fingerprint())
                .map(|s| Session {
                    user: s.user,
                    csrf: s.csrf,
                }),
            Err(e) => {
                tracing::error!(error = %e, "dashboard: cannot read a session");
                None
            }
        }
    }

    /// Ends the request's session, on every replica.
    pub async fn logout(&self, headers: &HeaderMap) {
        if let Some(token) = cookie(headers, SESSION_COOKIE) {
            let id = digest(token);
            if let Err(e) =
                crate::store::blocking(self.store.clone(), move |s| s.remove_session(&id)).await
            {
                tracing::error!(error = %e, "dashboard: cannot end a session");
            }
        }
    }

    /// Ends every session, this one included, on every replica.
    pub async fn logout_everywhere(&self) -> Result<(), crate::store::StoreError> {
        let now = ucanto::ucan::now();
        // Sessions that began in this very second end too.
        crate::store::blocking(self.store.clone(), move |s| s.end_sessions(now + 1)).await
    }

    /// Seconds until `attempt` may try again, if it is over a limit.
    fn limited(&self, attempt: &Attempt, now: Instant) -> Option<u64> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        match attempt {
            Attempt::Device(id) => over(failures.by_device.get(id), MAX_FAILURES, now),
            Attempt::Unknown(client) => {
                let mine = over(failures.by_client.get(client), MAX_FAILURES, now);
                let all = over(failures.unknown.as_ref(), MAX_UNKNOWN_FAILURES, now);
                mine.max(all)
            }
        }
    }

    fn fail(&self, attempt: &Attempt, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let window = Duration::from_secs(FAILURE_WINDOW_SECS);
        let live = |(start, _): &mut (Instant, u32)| now.duration_since(*start) < window;
        failures.by_client.retain(|_, entry| live(entry));
        failures.by_device.retain(|_, entry| live(entry));
        match attempt {
            Attempt::Device(id) => count(
                failures.by_device.entry(id.clone()).or_insert((now, 0)),
                now,
            ),
            Attempt::Unknown(client) => {
                count(failures.by_client.entry(*client).or_insert((now, 0)), now);
                count(failures.unknown.get_or_insert((now, 0)), now);
            }
        }
    }

    /// A new device cookie: a random id and its MAC.
    fn new_device(&self) -> String {
        let id = hex::encode(&random_token().as_bytes()[..16]);
        format!("{id}.{}", self.device_mac(&id))
    }

    /// The id of a device cookie whose MAC holds under these credentials.
    fn device_id(&self, cookie: &str) -> Option<String> {
        let (id, mac) = cookie.split_once('.')?;
        (id.len() == 32 && constant_time_eq(mac.as_bytes(), self.device_mac(id).as_bytes()))
            .then(|| id.to_string())
    }

    /// HMAC-SHA256 of `id` under a key made from the credentials (the admin
    /// token and password are secrets; other credentials void the cookie).
    fn device_mac(&self, id: &str) -> String {
        let key: [u8; 32] = Sha256::new()
            .chain_update(b"etracker device key\0")
            .chain_update(self.credentials.fingerprint())
            .chain_update(self.credentials.token.as_deref().unwrap_or_default())
            .chain_update(
                self.credentials
                    .user_password
                    .as_ref()
                    .map_or("", |(_, password)| password.as_str()),
            )
            .finalize()
            .into();
        hex::encode(hmac_sha256(&key, id.as_bytes()))
    }
}

/// HMAC-SHA256 (RFC 2104) of `message` under a 32-byte `key`.
fn hmac_sha256(key: &[u8; 32], message: &[u8]) -> [u8; 32] {
    let (mut inner_key, mut outer_key) = ([0x36u8; 64], [0x5cu8; 64]);
    for (i, byte) in key.iter().enumerate() {
        inner_key[i] ^= byte;
        outer_key[i] ^= byte;
    }
    let inner = Sha256::new()
        .chain_update(inner_key)
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(outer_key)
        .chain_update(inner)
        .finalize()
        .into()
}

/// 32 random bytes, hex.
pub fn random_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// The value of cookie `name` in the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Whether the request reached us over https (directly or via a proxy).
pub fn over_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// A `Set-Cookie` value for the dashboard (`max_age` 0 removes it).
pub fn set_cookie(name: &str, value: &str, max_age: u64, secure: bool) -> String {
    format!(
        "{name}={value}; Path=/admin; Max-Age={max_age}; HttpOnly; SameSite=Strict{}",
        if secure { "; Secure" } else { "" }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn credentials() -> Credentials {
        Credentials {
            user_password: Some(("ops".into(), "correct horse".into())),
            token: Some("admin-token".into()),
        }
    }

    fn sessions() -> Sessions {
        let store = crate::store::redb::RedbStore::in_memory().unwrap();
        Sessions::new(credentials(), Arc::new(store))
    }

    fn with_cookie(name: &str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            format!("other=1; {name}={value}").parse().unwrap(),
        );
        headers
    }

    #[tokio::test]
    async fn right_credentials_or_the_token_open_a_session() {
        let s = sessions();
        let ip = Some("10.0.0.1".parse().unwrap());
        let Login::Session { session: token, .. } = s
            .login(ip, "ops", "correct horse", "x", (Some("x"), None))
            .await
        else {
            panic!("refused");
        };
        let session = s
            .session(&with_cookie(SESSION_COOKIE, &token))
            .await
            .unwrap();
        assert_eq!(session.user, "ops");
        assert_eq!(session.csrf.len(), 64);
        assert!(matches!(
            s.login(ip, "anyone", "admin-token", "y", (Some("y"), None))
                .await,
            Login::Session { .. }
        ));
        s.logout(&with_cookie(SESSION_COOKIE, &token)).await;
        assert!(s
            .session(&with_cookie(SESSION_COOKIE, &token))
            .await
            .is_none());
    }

    #[tokio::test]
    async fn wrong_or_forged_logins_are_refused() {
        let s = sessions();
        let ip = Some("10.0.0.2".parse().unwrap());
        assert_eq!(
            s.login(ip, "ops", "wrong", "x", (Some("x"), None)).await,
            Login::Refused
        );
        assert_eq!(
            s.login(ip, "root", "correct horse", "x", (Some("x"), None))
                .await,
            Login::Refused
        );
        // No login cookie, or one that differs from the form's token.
        assert_eq!(
            s.login(ip, "ops", "correct horse", "x", (None, None)).await,
            Login::Forged
        );
        assert_eq!(
            s.login(ip, "ops", "correct horse", "x", (Some("y"), None))
                .await,
            Login::Forged
        );
        assert_eq!(
            s.login(ip, "ops", "correct horse", "", (Some(""), None))
                .await,
            Login::Forged
        );
        assert!(s
            .session(&with_cookie(SESSION_COOKIE, "0".repeat(64).as_str()))
            .await
            .is_none());
        let store = crate::store::redb::RedbStore::in_memory().unwrap();
        let none = Sessions::new(Credentials::default(), Arc::new(store));
        assert_eq!(
            none.login(ip, "", "", "x", (Some("x"), None)).await,
            Login::Refused
        );
    }

    #[tokio::test]
    async fn guessing_is_limited_per_client() {
        let s = sessions();
        let guesser = Some("10.0.0.3".parse().unwrap());
        for _ in 0..MAX_FAILURES {
            assert_eq!(
                s.login(guesser, "ops", "guess", "x", (Some("x"), None))
                    .await,
                Login::Refused
            );
        }
        // Now even the right password waits.
        assert!(matches!(
            s.login(guesser, "ops", "correct horse", "x", (Some("x"), None)).await,
            Login::Limited(wait) if wait > 0 && wait <= FAILURE_WINDOW_SECS
        ));
        // Another address is not held back by it.
        let other = Some("10.0.0.4".parse().unwrap());
        assert!(matches!(
            s.login(other, "ops", "correct horse", "x", (Some("x"), None))
                .await,
            Login::Session { .. }
        ));
        // An IPv6 host cannot dodge the limit by changing the low 64 bits.
        for i in 0..MAX_FAILURES {
            let ip: IpAddr = format!("2001:db8::{i:x}").parse().unwrap();
            assert_eq!(
                s.login(Some(ip), "ops", "guess", "x", (Some("x"), None))
                    .await,
                Login::Refused
            );
        }
        let next: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        assert!(matches!(
            s.login(Some(next), "ops", "correct horse", "x", (Some("x"), None))
                .await,
            Login::Limited(_)
        ));
    }

    /// Two replicas on one store: a login on one is a session on the
    /// other, and a logout on either ends it on both; an expired session
    /// opens nothing.
    #[tokio::test]
    async fn replicas_share_sessions_through_the_store() {
        let store: Arc<dyn Store> = Arc::new(crate::store::redb::RedbStore::in_memory().unwrap());
        let a = Sessions::new(credentials(), store.clone());
        let b = Sessions::new(credentials(), store.clone());
        let ip = Some("10.0.0.5".parse().unwrap());
        let Login::Session { session: token, .. } = a
            .login(ip, "ops", "correct horse", "x", (Some("x"), None))
            .await
        else {
            panic!("refused");
        };
        let cookie = with_cookie(SESSION_COOKIE, &token);
        let on_a = a.session(&cookie).await.unwrap();
        let on_b = b.session(&cookie).await.unwrap();
        assert_eq!((on_a.user, on_a.csrf), (on_b.user, on_b.csrf));
        b.logout(&cookie).await;
        assert!(a.session(&cookie).await.is_none());

        let old = random_token();
        let expired = StoredSession {
            user: "ops".into(),
            csrf: random_token(),
            expires_at: ucanto::ucan::now() - 1,
            started_at: 0,
            credentials: credentials().fingerprint(),
        };
        store.put_session(&digest(&old), &expired).unwrap();
        assert!(a
            .session(&with_cookie(SESSION_COOKIE, &old))
            .await
            .is_none());
    }

    #[test]
    fn cookies_are_read_and_written_strictly() {
        let headers = with_cookie(SESSION_COOKIE, "abc");
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "etracker"), None);
        let set = set_cookie(SESSION_COOKIE, "abc", 60, true);
        for part in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/admin"] {
            assert!(set.contains(part), "{set}");
        }
        assert!(!set_cookie(SESSION_COOKIE, "abc", 60, false).contains("Secure"));
    }

    /// A changed password or token ends the sessions opened before it; "log
    /// out everywhere" ends them all, on every replica of the store.
    #[tokio::test]
    async fn sessions_end_with_their_credentials_and_everywhere() {
        let store: Arc<dyn Store> = Arc::new(crate::store::redb::RedbStore::in_memory().unwrap());
        let before = Sessions::new(credentials(), store.clone());
        let ip = Some("10.0.0.9".parse().unwrap());
        let Login::Session { session: token, .. } = before
            .login(ip, "ops", "correct horse", "x", (Some("x"), None))
            .await
        else {
            panic!("refused");
        };
        let cookie = with_cookie(SESSION_COOKIE, &token);
        assert!(before.session(&cookie).await.is_some());
        for changed in [
            Credentials {
                user_password: Some(("ops".into(), "new horse".into())),
                ..credentials()
            },
            Credentials {
                token: Some("new-token".into()),
                ..credentials()
            },
        ] {
            let after = Sessions::new(changed, store.clone());
            assert!(after.session(&cookie).await.is_none());
        }
        // Same credentials: still open, until it logs out everywhere.
        let other = Sessions::new(credentials(), store.clone());
        let Login::Session {
            session: second, ..
        } = other
            .login(ip, "ops", "correct horse", "y", (Some("y"), None))
            .await
        else {
            panic!("refused");
        };
        assert!(other.session(&cookie).await.is_some());
        other.logout_everywhere().await.unwrap();
        assert!(before.session(&cookie).await.is_none());
        assert!(other
            .session(&with_cookie(SESSION_COOKIE, &second))
            .await
            .is_none());
    }

    /// A stranger guessing from the address every caller shares (a proxy),
    /// or from many, holds back logins without a device cookie, never a
    /// browser that logged in before; a device cookie is only good with
    /// its MAC, and guesses with one are limited on their own.
    #[tokio::test]
    async fn strangers_cannot_lock_the_operators_out() {
        let s = sessions();
        let proxy = Some("10.0.0.10".parse().unwrap());
        let Login::Session { device, .. } = s
            .login(proxy, "ops", "correct horse", "x", (Some("x"), None))
            .await
        else {
            panic!("refused");
        };
        // Guesses from many addresses, as many as the shared budget allows.
        for i in 0..MAX_UNKNOWN_FAILURES {
            let ip: IpAddr = format!("192.0.2.{}", i % 250).parse().unwrap();
            let out = s
                .login(Some(ip), "ops", "guess", "x", (Some("x"), None))
                .await;
            assert!(matches!(out, Login::Refused | Login::Limited(_)), "{out:?}");
        }
        // A new address without a device cookie waits now: many addresses
        // bought no more guesses.
        let fresh = Some("198.51.100.7".parse().unwrap());
        assert!(matches!(
            s.login(fresh, "ops", "correct horse", "x", (Some("x"), None))
                .await,
            Login::Limited(_)
        ));
        // The operator's browser still logs in, through the same proxy.
        let out = s
            .login(
                proxy,
                "ops",
                "correct horse",
                "x",
                (Some("x"), Some(&device)),
            )
            .await;
        assert!(
            matches!(&out, Login::Session { device: kept, .. } if *kept == device),
            "{out:?}"
        );
        // A device cookie with a wrong MAC is no device cookie.
        let forged = format!("{}.{}", &device[..32], "0".repeat(64));
        assert!(matches!(
            s.login(
                fresh,
                "ops",
                "correct horse",
                "x",
                (Some("x"), Some(&forged))
            )
            .await,
            Login::Limited(_)
        ));
        // Guesses with a device cookie count against that device alone.
        for _ in 0..MAX_FAILURES {
            assert_eq!(
                s.login(proxy, "ops", "guess", "x", (Some("x"), Some(&device)))
                    .await,
                Login::Refused
            );
        }
        assert!(matches!(
            s.login(
                proxy,
                "ops",
                "correct horse",
                "x",
                (Some("x"), Some(&device))
            )
            .await,
            Login::Limited(_)
        ));
        // Other credentials void every device cookie.
        let changed = Sessions::new(
            Credentials {
                token: Some("another".into()),
                ..credentials()
            },
            Arc::new(crate::store::redb::RedbStore::in_memory().unwrap()),
        );
        assert_eq!(changed.device_id(&device), None);
        assert!(s.device_id(&device).is_some());
    }
}
