//! Summaries of measured samples.

use serde_json::{json, Value};

/// The value at quantile `q` (nearest rank) of sorted samples.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// p50, p90, p99, max and mean of samples in milliseconds.
pub fn summary(mut samples: Vec<f64>) -> Value {
    samples.sort_by(f64::total_cmp);
    let mean = if samples.is_empty() {
        0.0
    } else {
        samples.iter().sum::<f64>() / samples.len() as f64
    };
    json!({
        "p50": round(quantile(&samples, 0.50)),
        "p90": round(quantile(&samples, 0.90)),
        "p99": round(quantile(&samples, 0.99)),
        "max": round(samples.last().copied().unwrap_or(0.0)),
        "mean": round(mean),
        "samples": samples.len(),
    })
}

/// Operations per second, rounded.
pub fn rate(count: usize, seconds: f64) -> f64 {
    if seconds <= 0.0 {
        return 0.0;
    }
    (count as f64 / seconds).round()
}
