//! Retry schedule: Upstash's backoff `min(max, e^(2.5·n))` seconds for the n-th retry,
//! with ±10% jitter, scaled by `delivery.backoff_factor`; a receiver's `Retry-After` or
//! `X-RateLimit-Reset` (seconds or an HTTP date) wins, capped at `max`.

use std::time::Duration;

use rand::Rng;
use reqwest::header::HeaderMap;

/// Delay before retry number `retry` (1 for the first retry).
pub fn backoff(retry: u32, factor: f64, max: Duration) -> Duration {
    let base = (2.5 * f64::from(retry.clamp(1, 100))).exp();
    let jitter = rand::rng().random_range(0.9..1.1);
    // Cap after jitter, so the longest backoff is exactly `max`.
    Duration::from_secs_f64((base * jitter * factor).clamp(0.0, max.as_secs_f64()))
}

/// What the receiver asked for, if anything (`Retry-After`, then `X-RateLimit-Reset`).
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    ["retry-after", "x-ratelimit-reset"]
        .iter()
        .find_map(|name| {
            headers
                .get(*name)?
                .to_str()
                .ok()
                .and_then(parse_retry_after)
        })
}

fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstash_schedule() {
        let max = Duration::from_secs(86_400);
        let first = backoff(1, 1.0, max).as_secs_f64();
        assert!((10.9..13.5).contains(&first), "{first}");
        let second = backoff(2, 1.0, max).as_secs_f64();
        assert!((133.0..=163.3).contains(&second), "{second}");
        assert_eq!(backoff(10, 1.0, max), max);
        assert!(backoff(1, 0.001, max) < Duration::from_millis(14));
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "7".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            httpdate::fmt_http_date(later).parse().unwrap(),
        );
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(100) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-reset", "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        assert_eq!(retry_after(&HeaderMap::new()), None);
    }
}
