//! Limits that keep one tenant or one client from hurting the others, all in this process's
//! memory and all bounded:
//!
//! - the per-organization API rate limit (`org_rate_limit` requests/s, bursts of twice that;
//!   GCRA, one small state per organization that sent a request recently);
//! - the throttle on failed authentications per client address: after [`AUTH_FAILURES`]
//!   failures within [`AUTH_WINDOW`] from one address, requests from it whose key this process
//!   has not seen authenticate are answered 429 without a database read, until the window
//!   ends. Keys that did authenticate here keep working from that address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::Notify;

/// Failed authentications one address may have within [`AUTH_WINDOW`].
pub const AUTH_FAILURES: u32 = 20;
/// The window over which failed authentications are counted.
pub const AUTH_WINDOW: Duration = Duration::from_secs(10);
/// Most client addresses tracked at once (about 40 bytes each). Past it, addresses in a finished
/// window are forgotten first; if every one is still counting, a new address is not tracked
/// until some window ends (those already throttled stay throttled).
const AUTH_ADDRESSES: usize = 65_536;
/// How long a key that authenticated stays known-good, that is, usable from a throttled
/// address (it is still checked as usual: a revoked key gets its 401).
const GOOD_KEY_TTL: Duration = Duration::from_secs(3600);
/// Most known-good keys remembered at once.
const GOOD_KEYS: usize = 10_000;
/// How often the rate limiter forgets organizations that are back to a full allowance.
const ORG_CLEANUP_EVERY: Duration = Duration::from_secs(60);

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The organization is over `org_rate_limit`.
    OrgRate,
    /// Too many failed authentications from the client's address.
    AuthFailures,
}

/// A refused request: which limit, and when to retry (whole seconds, at least 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub refusal: Refusal,
    pub retry_after_secs: u64,
}

impl Limited {
    fn new(refusal: Refusal, wait: Duration) -> Limited {
        // Whole seconds, rounded up: a client that waits as told is not refused again for the
        // same reason.
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Limited {
            refusal,
            retry_after_secs: secs.max(1),
        }
    }
}

/// Every limit of one process.
pub struct Limits {
    org: Option<OrgRateLimit>,
    auth: AuthThrottle,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("org_rate_limit", &self.org.as_ref().map(|o| o.per_second))
            .finish_non_exhaustive()
    }
}

impl Limits {
    /// `org_rate_limit` requests/s per organization (0: no limit).
    pub fn new(org_rate_limit: u32) -> Limits {
        Limits {
            org: NonZeroU32::new(org_rate_limit).map(OrgRateLimit::new),
            auth: AuthThrottle::default(),
        }
    }

    /// Counts one API request of `org`.
    pub fn check_org(&self, org: &str) -> Result<(), Limited> {
        match &self.org {
            Some(limit) => limit.check(org),
            None => Ok(()),
        }
    }

    /// The failed-authentication throttle.
    pub fn auth(&self) -> &AuthThrottle {
        &self.auth
    }
}

struct OrgRateLimit {
    per_second: NonZeroU32,
    limiter: DefaultKeyedRateLimiter<String>,
    last_cleanup: Mutex<Instant>,
}

impl OrgRateLimit {
    fn new(per_second: NonZeroU32) -> OrgRateLimit {
        let burst = per_second.saturating_mul(NonZeroU32::new(2).expect("2 is not 0"));
        OrgRateLimit {
            per_second,
            limiter: RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)),
            last_cleanup: Mutex::new(Instant::now()),
        }
    }

    fn check(&self, org: &str) -> Result<(), Limited> {
        self.cleanup_now_and_then();
        // The key is owned by the map; an organization ID is a short string.
        self.limiter
            .check_key(&org.to_owned())
            .map_err(|not_until| {
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                Limited::new(Refusal::OrgRate, wait)
            })
    }

    /// Keeps memory to the organizations seen in the last seconds: one whose allowance is full
    /// again is indistinguishable from one never seen, and is dropped.
    fn cleanup_now_and_then(&self) {
        let Ok(mut last) = self.last_cleanup.try_lock() else {
            return; // another request is doing it
        };
        if last.elapsed() >= ORG_CLEANUP_EVERY {
            *last = Instant::now();
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
    }
}

/// What a client address is tracked as: an IPv4 address, or an IPv6 /64 (one subscriber's
/// network, which holds more addresses than could ever be tracked one by one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum ClientKey {
    V4(u32),
    V6(u64),
}

impl From<IpAddr> for ClientKey {
    fn from(ip: IpAddr) -> ClientKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => ClientKey::V4(v4.to_bits()),
            IpAddr::V6(v6) => ClientKey::V6((v6.to_bits() >> 64) as u64),
        }
    }
}

/// One address's failed authentications in its current window, and its lookups still
/// running (which may yet fail).
#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
    running: u32,
}

impl Window {
    fn is_over(&self, now: Instant) -> bool {
        now.duration_since(self.started) >= AUTH_WINDOW
    }

    fn ends_in(&self, now: Instant) -> Duration {
        AUTH_WINDOW.saturating_sub(now.duration_since(self.started))
    }
}

/// What [`AuthThrottle::try_begin`] decided.
enum Admission {
    Go(Option<ClientKey>),
    /// The failures and the lookups running make the limit: wait for one to end (at most this
    /// long, when the window ends).
    Wait(Duration),
    Refused(Limited),
}

/// Failed authentications per client address, and the keys known to be good.
///
/// Lookups running count against the limit until they end, so concurrent requests cannot all
/// get past it together: while failures plus running lookups make [`AUTH_FAILURES`], further
/// requests from that address wait for a running one to end, then are let through (it
/// succeeded, or their own key turned out good meanwhile) or refused (it failed).
#[derive(Debug, Default)]
pub struct AuthThrottle {
    windows: Mutex<HashMap<ClientKey, Window>>,
    /// Known-good keys by digest: when they authenticated, and their organization.
    good: Mutex<HashMap<[u8; 32], (Instant, String)>>,
    ended: Notify,
}

/// A lookup let through to the database; report how it ended with [`AuthThrottle::succeeded`]
/// or [`AuthThrottle::failed`] (dropping it, say on a database error, counts as neither).
#[derive(Debug)]
pub struct Pending<'a> {
    throttle: &'a AuthThrottle,
    client: Option<ClientKey>,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(client) = self.client.take() {
            self.throttle.end(client, false);
        }
    }
}

impl AuthThrottle {
    /// Whether `digest` (of a presented key) authenticated here recently.
    pub fn is_known_good(&self, digest: &[u8; 32]) -> bool {
        let good = self.good.lock().expect("auth throttle lock");
        good.get(digest)
            .is_some_and(|(at, _)| at.elapsed() < GOOD_KEY_TTL)
    }

    /// Lets a lookup of the key with `digest`, presented from `ip` (`None`: unknown, not
    /// throttled), go to the database, waiting while lookups from that address are running at
    /// its limit; refuses it while the address is over its failures, unless the key is
    /// known-good.
    pub async fn admit(
        &self,
        ip: Option<IpAddr>,
        digest: &[u8; 32],
    ) -> Result<Pending<'_>, Limited> {
        loop {
            // Registered before looking, so an end between the look and the wait is not missed.
            let ended = self.ended.notified();
            let admission = if self.is_known_good(digest) {
                Admission::Go(None)
            } else {
                self.try_begin(ip)
            };
            match admission {
                Admission::Go(client) => {
                    return Ok(Pending {
                        throttle: self,
                        client,
                    });
                }
                Admission::Refused(limited) => return Err(limited),
                Admission::Wait(at_most) => {
                    let _ = tokio::time::timeout(at_most, ended).await;
                }
            }
        }
    }

    fn try_begin(&self, ip: Option<IpAddr>) -> Admission {
        let Some(ip) = ip else {
            return Admission::Go(None);
        };
        let client = ClientKey::from(ip);
        let now = Instant::now();
        let mut windows = self.windows.lock().expect("auth throttle lock");
        if !windows.contains_key(&client) && windows.len() >= AUTH_ADDRESSES {
            windows.retain(|_, w| w.running > 0 || !w.is_over(now));
            if windows.len() >= AUTH_ADDRESSES {
                return Admission::Go(None);
            }
        }
        let window = windows.entry(client).or_insert(Window {
            started: now,
            failures: 0,
            running: 0,
        });
        if window.is_over(now) {
            window.started = now;
            window.failures = 0;
        }
        if window.failures >= AUTH_FAILURES {
            return Admission::Refused(Limited::new(Refusal::AuthFailures, window.ends_in(now)));
        }
        if window.failures + window.running >= AUTH_FAILURES {
            return Admission::Wait(window.ends_in(now));
        }
        window.running += 1;
        Admission::Go(Some(client))
    }

    /// A revoked key is not known-good any more.
    pub fn forget_key(&self, digest: &[u8; 32]) {
        self.good.lock().expect("auth throttle lock").remove(digest);
    }

    /// Nor are a deleted organization's keys.
    pub fn forget_org(&self, org: &str) {
        self.good
            .lock()
            .expect("auth throttle lock")
            .retain(|_, (_, of)| of != org);
    }

    /// The key (of `org`) authenticated: it is known-good from now on.
    pub fn succeeded(&self, pending: Pending<'_>, digest: [u8; 32], org: &str) {
        {
            let mut good = self.good.lock().expect("auth throttle lock");
            if good.len() >= GOOD_KEYS && !good.contains_key(&digest) {
                good.retain(|_, (at, _)| at.elapsed() < GOOD_KEY_TTL);
                if good.len() >= GOOD_KEYS {
                    // Forgetting is safe: those keys only go through the throttle again.
                    good.clear();
                }
            }
            good.insert(digest, (Instant::now(), org.to_owned()));
        }
        drop(pending);
    }

    /// The key did not authenticate: one more failure for its address, and the key is not
    /// good (any more).
    pub fn failed(&self, mut pending: Pending<'_>, digest: &[u8; 32]) {
        self.good.lock().expect("auth throttle lock").remove(digest);
        if let Some(client) = pending.client.take() {
            self.end(client, true);
        }
    }

    fn end(&self, client: ClientKey, failed: bool) {
        {
            let mut windows = self.windows.lock().expect("auth throttle lock");
            if let Some(window) = windows.get_mut(&client) {
                window.running = window.running.saturating_sub(1);
                if failed {
                    let now = Instant::now();
                    if window.is_over(now) {
                        window.started = now;
                        window.failures = 0;
                    }
                    window.failures += 1;
                }
            }
        }
        self.ended.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DIGEST: [u8; 32] = [7; 32];

    #[test]
    fn retry_after_is_whole_seconds_rounded_up_and_at_least_one() {
        let secs = |d| Limited::new(Refusal::OrgRate, d).retry_after_secs;
        assert_eq!(secs(Duration::ZERO), 1);
        assert_eq!(secs(Duration::from_millis(1)), 1);
        assert_eq!(secs(Duration::from_millis(1000)), 1);
        assert_eq!(secs(Duration::from_millis(1001)), 2);
    }

    #[test]
    fn an_organization_gets_a_burst_of_twice_its_rate_then_waits() {
        let limits = Limits::new(3);
        for _ in 0..6 {
            limits.check_org("org_a").unwrap();
        }
        let limited = limits.check_org("org_a").unwrap_err();
        assert_eq!(limited.refusal, Refusal::OrgRate);
        assert_eq!(limited.retry_after_secs, 1);
        // Another organization has its own allowance.
        limits.check_org("org_b").unwrap();
        // No limit: never refused.
        let off = Limits::new(0);
        for _ in 0..1000 {
            off.check_org("org_a").unwrap();
        }
    }

    fn begin<'a>(throttle: &'a AuthThrottle, ip: &str) -> Pending<'a> {
        match throttle.try_begin(Some(ip.parse().unwrap())) {
            Admission::Go(client) => Pending { throttle, client },
            Admission::Wait(_) => panic!("{ip} has to wait"),
            Admission::Refused(_) => panic!("{ip} is refused"),
        }
    }

    fn is_refused(throttle: &AuthThrottle, ip: &str) -> bool {
        matches!(
            throttle.try_begin(Some(ip.parse().unwrap())),
            Admission::Refused(Limited {
                refusal: Refusal::AuthFailures,
                retry_after_secs: 1..=10
            })
        )
    }

    #[test]
    fn an_address_is_refused_after_its_failures_and_others_are_not() {
        let throttle = AuthThrottle::default();
        for _ in 0..AUTH_FAILURES {
            throttle.failed(begin(&throttle, "192.0.2.1"), &DIGEST);
        }
        assert!(is_refused(&throttle, "192.0.2.1"));
        // IPv4 written as IPv6 is the same client.
        assert!(is_refused(&throttle, "::ffff:192.0.2.1"));
        begin(&throttle, "192.0.2.2");
        assert!(matches!(throttle.try_begin(None), Admission::Go(None)));
    }

    #[test]
    fn lookups_running_count_until_they_end() {
        let throttle = AuthThrottle::default();
        let ip = "2001:db8::1";
        for _ in 0..10 * AUTH_FAILURES {
            throttle.succeeded(begin(&throttle, ip), DIGEST, "org_a");
            drop(begin(&throttle, ip));
        }
        let running: Vec<_> = (0..AUTH_FAILURES).map(|_| begin(&throttle, ip)).collect();
        // The same /64 is the same client; it waits for a running lookup to end.
        assert!(matches!(
            throttle.try_begin(Some("2001:db8::2".parse().unwrap())),
            Admission::Wait(_)
        ));
        for pending in running {
            throttle.failed(pending, &DIGEST);
        }
        assert!(is_refused(&throttle, ip));
    }

    #[tokio::test]
    async fn a_waiting_request_goes_once_a_running_lookup_succeeds() {
        let throttle = AuthThrottle::default();
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let running: Vec<_> = (0..AUTH_FAILURES)
            .map(|_| begin(&throttle, "192.0.2.9"))
            .collect();
        let waiting = throttle.admit(Some(ip), &DIGEST);
        tokio::pin!(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut waiting)
                .await
                .is_err()
        );
        let mut running = running.into_iter();
        throttle.succeeded(running.next().unwrap(), DIGEST, "org_a");
        // Its own key is known-good now: it goes, and so does any later request with it.
        waiting.await.unwrap();
        throttle.admit(Some(ip), &DIGEST).await.unwrap();
        // Those still running fail, and one more: other keys are refused, the good one still
        // goes.
        for pending in running {
            throttle.failed(pending, &[1; 32]);
        }
        throttle.failed(begin(&throttle, "192.0.2.9"), &[1; 32]);
        assert!(throttle.admit(Some(ip), &[2; 32]).await.is_err());
        throttle.admit(Some(ip), &DIGEST).await.unwrap();
    }

    #[test]
    fn a_failing_key_is_no_longer_known_good() {
        let throttle = AuthThrottle::default();
        throttle.succeeded(begin(&throttle, "192.0.2.3"), DIGEST, "org_a");
        assert!(throttle.is_known_good(&DIGEST));
        throttle.failed(begin(&throttle, "192.0.2.3"), &DIGEST);
        assert!(!throttle.is_known_good(&DIGEST));
    }

    #[test]
    fn a_revoked_key_or_a_deleted_organizations_keys_are_no_longer_known_good() {
        let throttle = AuthThrottle::default();
        let other = [8; 32];
        throttle.succeeded(begin(&throttle, "192.0.2.4"), DIGEST, "org_a");
        throttle.succeeded(begin(&throttle, "192.0.2.4"), other, "org_b");
        throttle.forget_key(&DIGEST);
        assert!(!throttle.is_known_good(&DIGEST));
        assert!(throttle.is_known_good(&other));
        throttle.forget_org("org_b");
        assert!(!throttle.is_known_good(&other));
    }
}
