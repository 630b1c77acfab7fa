//! Fetching batches: an HTTP client that reaches public addresses only, and
//! the spool files batches are streamed to.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use super::BatchLimits;

/// The HTTP client batches are fetched with: the download timeout and, unless
/// private endpoints are allowed, a resolver and redirect policy that only
/// reach public addresses. Filtering at resolution means a DNS answer that
/// changes between a check and the connection cannot slip through.
pub(super) fn batch_client(limits: &BatchLimits) -> reqwest::Client {
    // No proxy from the environment: a proxy would fetch on our behalf from
    // wherever it sits, past the address filter below.
    let mut builder = reqwest::Client::builder()
        .timeout(limits.fetch_timeout)
        .no_proxy();
    if !limits.allow_private_endpoints {
        builder =
            builder
                .dns_resolver(Arc::new(PublicOnly))
                .redirect(reqwest::redirect::Policy::custom(|attempt| {
                    let private = attempt
                        .url()
                        .host_str()
                        .and_then(|h| h.trim_matches(['[', ']']).parse::<IpAddr>().ok())
                        .is_some_and(|ip| !is_public(ip));
                    if private {
                        attempt.error("redirect to a non-public address")
                    } else if attempt.previous().len() >= 5 {
                        attempt.error("too many redirects")
                    } else {
                        attempt.follow()
                    }
                }));
    }
    builder.build().unwrap_or_default()
}

/// Resolves names to their public addresses only.
struct PublicOnly;

impl reqwest::dns::Resolve for PublicOnly {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .filter(|a| is_public(a.ip()))
                .collect();
            if addresses.is_empty() {
                return Err(format!("{host} has no public address").into());
            }
            Ok(Box::new(addresses.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The IP address of a URL whose host is an IP literal.
pub(super) fn literal_ip(url: &str) -> Option<IpAddr> {
    let url = reqwest::Url::parse(url).ok()?;
    url.host_str()?.trim_matches(['[', ']']).parse().ok()
}

/// Whether `ip` is a public unicast address (not loopback, private, link-local,
/// shared, documentation, multicast or reserved).
pub(super) fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_unspecified()
                || v4.is_multicast()
                || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
                || (a == 198 && (18..20).contains(&b)) // benchmarking (198.18.0.0/15)
                || (a == 192 && b == 0 && v4.octets()[2] == 0) // IETF protocol assignments
                || a == 0
                || a >= 240)
        }
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public(IpAddr::V4(v4)),
            None => {
                let segments = v6.segments();
                let first = segments[0];
                // NAT64 (64:ff9b::/96, and the local-use 64:ff9b:1::/48) and
                // 6to4 (2002::/16) addresses stand for an IPv4 address that a
                // gateway would reach for us, possibly a private one: refused.
                let translated = segments[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
                    || segments[..3] == [0x64, 0xff9b, 1]
                    || first == 0x2002;
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || v6.is_multicast()
                    || translated
                    || (first & 0xfe00) == 0xfc00 // unique local
                    || (first & 0xffc0) == 0xfe80) // link-local
            }
        },
    }
}

/// The slowest a download may be ([`BatchLimits::min_fetch_rate`]): by when
/// the bytes received so far must have grown, counted from the request.
pub(super) struct RateFloor {
    start: tokio::time::Instant,
    rate: u64,
    grace: std::time::Duration,
}

/// A download cut off for being slower than the minimum rate.
#[derive(Debug)]
pub(super) struct TooSlow {
    received: u64,
    elapsed: std::time::Duration,
    rate: u64,
}

impl std::fmt::Display for TooSlow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "too slow: {} bytes in {:.1} s, below the minimum rate of {} bytes/s",
            self.received,
            self.elapsed.as_secs_f64(),
            self.rate
        )
    }
}

impl RateFloor {
    /// The floor of a download starting now.
    pub(super) fn new(limits: &BatchLimits) -> Self {
        RateFloor {
            start: tokio::time::Instant::now(),
            rate: limits.min_fetch_rate,
            grace: limits.min_fetch_rate_grace,
        }
    }

    /// When a download that has `received` bytes falls below the rate
    /// (never before the grace ends); `None`: never.
    fn deadline(&self, received: u64) -> Option<tokio::time::Instant> {
        if self.rate == 0 {
            return None;
        }
        let nanos = u128::from(received) * 1_000_000_000 / u128::from(self.rate);
        let at_rate = std::time::Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX));
        self.start.checked_add(at_rate.max(self.grace))
    }

    /// `step` (the response, the next chunk), unless the download falls
    /// below the rate first, having `received` bytes.
    pub(super) async fn within<T>(
        &self,
        received: u64,
        step: impl std::future::Future<Output = T>,
    ) -> Result<T, TooSlow> {
        let Some(deadline) = self.deadline(received) else {
            return Ok(step.await);
        };
        tokio::time::timeout_at(deadline, step)
            .await
            .map_err(|_| TooSlow {
                received,
                elapsed: self.start.elapsed(),
                rate: self.rate,
            })
    }
}

/// Spool file names: `etracker-batch-<batch>-<pid>-<n>.car`.
const SPOOL_PREFIX: &str = "etracker-batch-";

/// Removes the spool files in `dir` that a process no longer running left
/// behind (a crash mid-download); returns how many. Files of live processes,
/// another consolidator's sharing the directory included, are left alone.
pub fn remove_stale_spool_files(dir: &std::path::Path) -> usize {
    // Without /proc we cannot tell who is alive: remove nothing.
    if !std::path::Path::new("/proc/self").exists() {
        return 0;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(SPOOL_PREFIX)?.strip_suffix(".car"))
            .and_then(|rest| rest.rsplit('-').nth(1))
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = std::path::Path::new("/proc").join(pid.to_string()).exists();
        if !alive && std::fs::remove_file(entry.path()).is_ok() {
            tracing::info!(file = %entry.path().display(), "removed a stale spool file");
            removed += 1;
        }
    }
    removed
}

/// A fresh spool file in `dir` for `batch`, named so that
/// [`remove_stale_spool_files`] knows its process; a process-unique number
/// keeps concurrent runs of one task apart.
pub(super) fn spool_path(dir: &std::path::Path, batch: &cid::Cid) -> std::path::PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    dir.join(format!(
        "{SPOOL_PREFIX}{batch}-{}-{n}.car",
        std::process::id()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A download must keep up the minimum rate once the grace is over:
    /// its deadline moves with the bytes received, and a stalled one is
    /// cut off at it, not at the fetch timeout.
    #[tokio::test]
    async fn a_download_below_the_minimum_rate_is_cut_off() {
        let millis = std::time::Duration::from_millis;
        let limits = BatchLimits {
            min_fetch_rate: 1000,
            min_fetch_rate_grace: millis(100),
            ..BatchLimits::default()
        };
        let floor = RateFloor::new(&limits);
        let start = floor.start;
        assert_eq!(floor.deadline(0), Some(start + millis(100)), "the grace");
        assert_eq!(floor.deadline(50), Some(start + millis(100)));
        assert_eq!(floor.deadline(30_000), Some(start + millis(30_000)));
        assert!(floor.deadline(u64::MAX).is_none_or(|d| d > start));
        // Stalled at 150 bytes: cut off at 150 ms.
        let stalled = floor.within(150, std::future::pending::<()>()).await;
        let err = stalled.unwrap_err();
        assert!(err.elapsed >= millis(150), "{:?}", err.elapsed);
        assert!(err.elapsed < millis(5_000), "{:?}", err.elapsed);
        assert!(err.to_string().starts_with("too slow: 150 bytes"), "{err}");
        // Fast enough: the step's own outcome.
        assert_eq!(floor.within(1 << 20, async { 7 }).await.unwrap(), 7);
        let off = RateFloor::new(&BatchLimits {
            min_fetch_rate: 0,
            ..limits
        });
        assert!(off.deadline(0).is_none(), "0 turns the floor off");
    }

    #[test]
    fn only_public_addresses_are_public() {
        for private in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::1",
            "fe80::1",
            "fd00::1",
            "::ffff:10.0.0.1",
            "198.18.0.1",
            "198.19.255.255",
            "192.0.0.8",
            "64:ff9b::7f00:1",
            "64:ff9b::808:808",
            "64:ff9b:1::a00:1",
            "2002:7f00:1::1",
            "2002:808:808::1",
        ] {
            assert!(!is_public(private.parse().unwrap()), "{private}");
        }
        for public in [
            "1.1.1.1",
            "93.184.216.34",
            "2606:4700:4700::1111",
            "::ffff:8.8.8.8",
            "198.20.0.1",
            "192.0.1.1",
            "2001:4860:4860::8888",
        ] {
            assert!(is_public(public.parse().unwrap()), "{public}");
        }
        assert_eq!(
            literal_ip("http://[::1]:8080/receipts/x"),
            Some("::1".parse().unwrap())
        );
        assert_eq!(literal_ip("https://node.example/receipts/x"), None);
    }
}
