//! The address guard: every address a delivery connects to is checked first (DESIGN 2.5).
//!
//! Host names are resolved by our own [`Lookup`]; every answer is classified, and if any is
//! blocked the name is refused (a name that mixes public and inner answers is a rebinding
//! risk). The checked addresses are exactly the ones handed to the HTTP client, which does no
//! second lookup, so DNS rebinding cannot switch them. A send's look-up is made ahead of its
//! request ([`AddressGuard::look_up`]), so the endpoint can be checked again between the
//! look-up and the connection; the connection then uses that answer (for at most
//! [`LOOKED_UP_FOR`]). reqwest does not consult a resolver for
//! IP-literal URLs, so those are checked on their own path ([`AddressGuard::check_literal`]).
//! The lookup is injectable so tests make any name resolve to any address without a network.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::domain::address::{self, Blocked};

pub type LookupFuture = Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>;

/// Resolves a host name to addresses.
pub trait Lookup: Send + Sync + fmt::Debug {
    fn lookup(&self, host: &str) -> LookupFuture;
}

/// The operating system's resolver.
#[derive(Debug, Default)]
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: &str) -> LookupFuture {
        let host = host.to_owned();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// A lookup with fixed answers, for tests and local experiments. Each name answers its lists
/// in turn (the last one repeats), so a test can make a name change its answer (rebinding),
/// or never answer at all ([`FixedLookup::hang`]).
#[derive(Debug, Default, Clone)]
pub struct FixedLookup(Arc<Mutex<HashMap<String, Fixed>>>);

#[derive(Debug)]
enum Fixed {
    Answers(Vec<Vec<IpAddr>>),
    /// A resolver that never responds.
    Hang,
    /// A slow resolver: answers once the gate opens.
    Held(LookupGate, Vec<IpAddr>),
}

/// Holds the look-ups of one name of a [`FixedLookup`] until it opens.
#[derive(Debug, Clone)]
pub struct LookupGate {
    open: Arc<tokio::sync::Semaphore>,
    asked: Arc<std::sync::atomic::AtomicUsize>,
}

impl LookupGate {
    /// Lets every held look-up, and every later one, answer.
    pub fn open(&self) {
        self.open
            .add_permits(tokio::sync::Semaphore::MAX_PERMITS / 2);
    }

    /// How many look-ups of the name have been asked so far.
    pub fn asked(&self) -> usize {
        self.asked.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl FixedLookup {
    pub fn answer(&self, host: &str, answers: Vec<Vec<IpAddr>>) {
        self.0
            .lock()
            .expect("lookup table")
            .insert(host.to_ascii_lowercase(), Fixed::Answers(answers));
    }

    /// From now on `host`'s look-ups wait until the returned gate opens, then answer
    /// `answer`: a resolver that is slow for as long as a test needs.
    pub fn hold(&self, host: &str, answer: Vec<IpAddr>) -> LookupGate {
        let gate = LookupGate {
            open: Arc::new(tokio::sync::Semaphore::new(0)),
            asked: Arc::default(),
        };
        self.0
            .lock()
            .expect("lookup table")
            .insert(host.to_ascii_lowercase(), Fixed::Held(gate.clone(), answer));
        gate
    }

    /// From now on `host` never answers: its look-ups wait forever, as behind a resolver that
    /// drops the query.
    pub fn hang(&self, host: &str) {
        self.0
            .lock()
            .expect("lookup table")
            .insert(host.to_ascii_lowercase(), Fixed::Hang);
    }
}

impl Lookup for FixedLookup {
    fn lookup(&self, host: &str) -> LookupFuture {
        let mut table = self.0.lock().expect("lookup table");
        let answer = match table.get_mut(&host.to_ascii_lowercase()) {
            Some(Fixed::Hang) => return Box::pin(std::future::pending()),
            Some(Fixed::Held(gate, answer)) => {
                let (gate, answer) = (gate.clone(), answer.clone());
                gate.asked.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                return Box::pin(async move {
                    let _ = gate.open.acquire().await;
                    Ok(answer)
                });
            }
            Some(Fixed::Answers(list)) if list.len() > 1 => Ok(list.remove(0)),
            Some(Fixed::Answers(list)) => Ok(list.first().cloned().unwrap_or_default()),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("failed to lookup address information: {host} is not in the table"),
            )),
        };
        Box::pin(async move { answer })
    }
}

/// A refused address: the error behind the `blocked_address` class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockedAddress {
    pub host: String,
    pub ip: IpAddr,
    pub why: Blocked,
}

impl fmt::Display for BlockedAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host == self.ip.to_string() {
            write!(f, "blocked address {}: {}", self.ip, self.why.reason())
        } else {
            // The address itself is not told: that would make the API an oracle for the
            // operator's internal DNS.
            write!(
                f,
                "blocked address: {} resolves to a {}",
                self.host,
                self.why.reason()
            )
        }
    }
}

impl std::error::Error for BlockedAddress {}

/// How long one name may take to resolve, at endpoint create/update and at every delivery. A
/// name that does not answer in time counts as one that does not resolve (a `dns` error; at
/// create/update the URL is accepted and checked again at delivery), so a resolver that never
/// answers cannot hold a request or a delivery worker.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a look-up made ahead of a send ([`AddressGuard::look_up`]) answers the
/// connections made for it (and other sends to the same host meanwhile).
pub const LOOKED_UP_FOR: Duration = Duration::from_secs(1);

/// Most names whose look-up ahead is kept.
const LOOKED_UP_AT_MOST: usize = 4096;

/// A look-up made ahead, as it ended.
#[derive(Debug, Clone)]
enum Answer {
    Checked(Vec<IpAddr>),
    Failed(std::io::ErrorKind, String),
    Blocked(BlockedAddress),
}

impl Answer {
    fn of(r: Result<Vec<IpAddr>, ResolveError>) -> Answer {
        match r {
            Ok(ips) => Answer::Checked(ips),
            Err(ResolveError::Lookup(e)) => Answer::Failed(e.kind(), e.to_string()),
            Err(ResolveError::Blocked(b)) => Answer::Blocked(b),
        }
    }

    fn result(self) -> Result<Vec<IpAddr>, ResolveError> {
        match self {
            Answer::Checked(ips) => Ok(ips),
            Answer::Failed(kind, message) => {
                Err(ResolveError::Lookup(std::io::Error::new(kind, message)))
            }
            Answer::Blocked(b) => Err(ResolveError::Blocked(b)),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AddressGuard {
    lookup: Arc<dyn Lookup>,
    allow_private: bool,
    lookup_timeout: Duration,
    /// Look-ups made ahead of sends, by lower-cased name, with when they ended.
    looked_up: Arc<Mutex<HashMap<String, (Instant, Answer)>>>,
}

impl AddressGuard {
    pub fn new(lookup: Arc<dyn Lookup>, allow_private: bool) -> AddressGuard {
        AddressGuard {
            lookup,
            allow_private,
            lookup_timeout: LOOKUP_TIMEOUT,
            looked_up: Arc::default(),
        }
    }

    /// Resolves `host` ahead of a send (bounded like every look-up): for [`LOOKED_UP_FOR`]
    /// the connection made for the send, and other sends to `host`, use this answer instead
    /// of looking up again. The dispatcher checks the endpoint once more after this, so a send
    /// that waited on a slow resolver still goes out with the endpoint's latest values.
    pub async fn look_up(&self, host: &str) {
        let host = host.to_ascii_lowercase();
        if self.looked_up_answer(&host).is_some() {
            return;
        }
        let answer = Answer::of(self.resolve(&host).await);
        let mut looked_up = self.looked_up.lock().expect("look-ups");
        if looked_up.len() >= LOOKED_UP_AT_MOST {
            looked_up.retain(|_, (at, _)| at.elapsed() < LOOKED_UP_FOR);
        }
        looked_up.insert(host, (Instant::now(), answer));
    }

    /// The answer of a recent [`AddressGuard::look_up`] of `host` (lower-cased), if any.
    fn looked_up_answer(&self, host: &str) -> Option<Answer> {
        let looked_up = self.looked_up.lock().expect("look-ups");
        let (at, answer) = looked_up.get(host)?;
        (at.elapsed() < LOOKED_UP_FOR).then(|| answer.clone())
    }

    /// The same guard with another bound on look-ups than [`LOOKUP_TIMEOUT`] (tests use a
    /// short one).
    pub fn with_lookup_timeout(mut self, bound: Duration) -> AddressGuard {
        self.lookup_timeout = bound;
        self
    }

    /// Checks an IP-literal host.
    pub fn check_literal(&self, ip: IpAddr) -> Result<(), BlockedAddress> {
        address::check(ip, self.allow_private).map_err(|why| BlockedAddress {
            host: ip.to_string(),
            ip,
            why,
        })
    }

    /// Resolves a name (giving up after the look-up bound) and checks every answer; `Ok`
    /// carries only checked addresses.
    pub async fn resolve(&self, host: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let answers = tokio::time::timeout(self.lookup_timeout, self.lookup.lookup(host))
            .await
            .map_err(|_| {
                // Not `TimedOut`: that would class a delivery's DNS failure as the receiver's
                // `timeout`.
                ResolveError::Lookup(std::io::Error::other(format!(
                    "{host} did not answer within {:?}",
                    self.lookup_timeout
                )))
            })?
            .map_err(ResolveError::Lookup)?;
        if answers.is_empty() {
            return Err(ResolveError::Lookup(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("dns error: {host} has no addresses"),
            )));
        }
        for ip in &answers {
            if let Err(why) = address::check(*ip, self.allow_private) {
                return Err(ResolveError::Blocked(BlockedAddress {
                    host: host.to_owned(),
                    ip: *ip,
                    why,
                }));
            }
        }
        Ok(answers)
    }

    /// Checks a URL's host: literals directly, names through the lookup. A name that does not
    /// resolve, or does not answer within the bound, passes (it is checked again at every
    /// delivery).
    pub async fn check_url(&self, url: &url::Url) -> Result<(), BlockedAddress> {
        match url.host() {
            Some(url::Host::Ipv4(ip)) => self.check_literal(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => self.check_literal(IpAddr::V6(ip)),
            Some(url::Host::Domain(name)) => match self.resolve(name).await {
                Err(ResolveError::Blocked(b)) => Err(b),
                _ => Ok(()),
            },
            None => Ok(()),
        }
    }
}

#[derive(Debug)]
pub enum ResolveError {
    Lookup(std::io::Error),
    Blocked(BlockedAddress),
}

impl fmt::Display for ResolveError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResolveError::Lookup(e) => write!(f, "dns error: {e}"),
            ResolveError::Blocked(b) => b.fmt(f),
        }
    }
}

impl std::error::Error for ResolveError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ResolveError::Lookup(e) => Some(e),
            ResolveError::Blocked(b) => Some(b),
        }
    }
}

/// The guard as reqwest's resolver: the client connects only to what it returns.
impl reqwest::dns::Resolve for AddressGuard {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.clone();
        let host = name.as_str().to_ascii_lowercase();
        Box::pin(async move {
            let ips = match guard.looked_up_answer(&host) {
                Some(answer) => answer.result()?,
                None => guard.resolve(&host).await?,
            };
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_look_up_made_ahead_answers_the_connection_without_asking_again() {
        let ip = |s: &str| -> IpAddr { s.parse().unwrap() };
        let (g, lookup) = guard(true);
        lookup.answer(
            "ahead.test",
            vec![vec![ip("93.184.216.34")], vec![ip("93.184.216.35")]],
        );
        g.look_up("Ahead.test").await;
        // The connection's look-up gets the first answer: the name was asked once.
        let resolved = reqwest::dns::Resolve::resolve(&g, "ahead.test".parse().unwrap())
            .await
            .unwrap()
            .map(|a| a.ip())
            .collect::<Vec<_>>();
        assert_eq!(resolved, vec![ip("93.184.216.34")]);
        // A failure is kept too, with its class: a blocked answer stays blocked.
        let (strict, strict_lookup) = guard(false);
        strict_lookup.answer(
            "inner.test",
            vec![vec![ip("10.0.0.1")], vec![ip("93.184.216.34")]],
        );
        strict.look_up("inner.test").await;
        let e = reqwest::dns::Resolve::resolve(&strict, "inner.test".parse().unwrap())
            .await
            .err()
            .unwrap();
        assert!(
            e.downcast_ref::<ResolveError>()
                .is_some_and(|e| matches!(e, ResolveError::Blocked(b) if b.host == "inner.test"))
        );
    }

    fn guard(allow: bool) -> (AddressGuard, FixedLookup) {
        let lookup = FixedLookup::default();
        (AddressGuard::new(Arc::new(lookup.clone()), allow), lookup)
    }

    #[tokio::test]
    async fn names_are_refused_if_any_answer_is_inner() {
        let (g, l) = guard(false);
        l.answer("public.test", vec![vec!["93.184.216.34".parse().unwrap()]]);
        l.answer("loop.test", vec![vec!["127.0.0.1".parse().unwrap()]]);
        l.answer(
            "mixed.test",
            vec![vec![
                "93.184.216.34".parse().unwrap(),
                "10.0.0.1".parse().unwrap(),
            ]],
        );
        assert!(g.resolve("public.test").await.is_ok());
        assert!(matches!(
            g.resolve("loop.test").await,
            Err(ResolveError::Blocked(_))
        ));
        assert!(matches!(
            g.resolve("mixed.test").await,
            Err(ResolveError::Blocked(_))
        ));
        assert!(matches!(
            g.resolve("unknown.test").await,
            Err(ResolveError::Lookup(_))
        ));
    }

    #[tokio::test]
    async fn urls_are_checked_in_every_spelling_the_parser_accepts() {
        let (g, l) = guard(false);
        l.answer("localhost", vec![vec!["127.0.0.1".parse().unwrap()]]);
        for url in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://169.254.169.254/latest/meta-data",
            "http://localhost:8080/",
        ] {
            let u = url::Url::parse(url).unwrap();
            assert!(g.check_url(&u).await.is_err(), "{url} must be refused");
        }
        assert!(
            g.check_url(&url::Url::parse("https://8.8.8.8/").unwrap())
                .await
                .is_ok()
        );
        // A name that does not resolve now is accepted; deliveries check it again.
        assert!(
            g.check_url(&url::Url::parse("https://nowhere.test/").unwrap())
                .await
                .is_ok()
        );
    }
    #[test]
    fn look_ups_are_bounded_at_five_seconds() {
        assert_eq!(LOOKUP_TIMEOUT, Duration::from_secs(5));
        let (g, _) = guard(false);
        assert_eq!(g.lookup_timeout, LOOKUP_TIMEOUT);
    }

    #[tokio::test]
    async fn a_name_that_never_answers_is_given_up_on_at_the_bound() {
        let (g, l) = guard(false);
        let bound = Duration::from_millis(200);
        let g = g.with_lookup_timeout(bound);
        l.hang("slow.test");
        // Far longer than the bound: only a guard that never gives up reaches it.
        let limit = Duration::from_secs(10);

        let started = std::time::Instant::now();
        let resolved = tokio::time::timeout(limit, g.resolve("slow.test"))
            .await
            .expect("the look-up is bounded");
        assert!(started.elapsed() >= bound);
        match resolved {
            Err(ResolveError::Lookup(e)) => {
                assert!(e.to_string().contains("slow.test"), "{e}");
                assert!(e.to_string().contains("did not answer"), "{e}");
            }
            other => panic!("expected a failed look-up, got {other:?}"),
        }

        // At creation, a name that does not answer in time is treated like one that does not
        // resolve: accepted now, checked again at every delivery.
        let url = url::Url::parse("https://slow.test/hook").unwrap();
        let checked = tokio::time::timeout(limit, g.check_url(&url))
            .await
            .expect("the check is bounded");
        assert!(checked.is_ok(), "{checked:?}");
    }
}
