//! Request counts and latency histograms per endpoint, in Prometheus' text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::{Mutex, PoisonError};

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

#[derive(Default)]
pub struct Metrics {
    /// By (method, route pattern).
    endpoints: Mutex<BTreeMap<(String, String), Endpoint>>,
}

#[derive(Default)]
struct Endpoint {
    by_status: BTreeMap<u16, u64>,
    /// Requests at or under each bucket's bound (not cumulative; summed when rendered).
    buckets: [u64; BUCKETS.len()],
    count: u64,
    seconds: f64,
}

/// A collection's sizes, for the gauges.
pub struct CollectionSizes {
    pub name: String,
    pub documents: u64,
    pub vectors: u64,
}

impl Metrics {
    /// Counts one answered request. `route` is the route's pattern (`/collections/{name}`),
    /// never the raw path, so the number of series stays bounded.
    pub fn record(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let mut endpoints = self.endpoints.lock().unwrap_or_else(PoisonError::into_inner);
        let endpoint = endpoints.entry((method.to_string(), route.to_string())).or_default();
        *endpoint.by_status.entry(status).or_default() += 1;
        if let Some(bucket) = BUCKETS.iter().position(|&bound| seconds <= bound) {
            endpoint.buckets[bucket] += 1;
        }
        endpoint.count += 1;
        endpoint.seconds += seconds;
    }

    pub fn render(&self, collections: &[CollectionSizes]) -> String {
        let endpoints = self.endpoints.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        out.push_str(
            "# HELP cloze_http_requests_total HTTP requests answered, by endpoint and status.\n",
        );
        out.push_str("# TYPE cloze_http_requests_total counter\n");
        for ((method, route), endpoint) in endpoints.iter() {
            for (status, count) in &endpoint.by_status {
                let _ = writeln!(
                    out,
                    "cloze_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {count}",
                    escape(route)
                );
            }
        }
        out.push_str("# HELP cloze_http_request_duration_seconds Time to answer, by endpoint.\n");
        out.push_str("# TYPE cloze_http_request_duration_seconds histogram\n");
        for ((method, route), endpoint) in endpoints.iter() {
            let labels = format!("method=\"{method}\",route=\"{}\"", escape(route));
            let mut cumulative = 0;
            for (bound, count) in BUCKETS.iter().zip(endpoint.buckets) {
                cumulative += count;
                let _ = writeln!(
                    out,
                    "cloze_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "cloze_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                endpoint.count
            );
            let _ = writeln!(
                out,
                "cloze_http_request_duration_seconds_sum{{{labels}}} {}",
                endpoint.seconds
            );
            let _ = writeln!(
                out,
                "cloze_http_request_duration_seconds_count{{{labels}}} {}",
                endpoint.count
            );
        }
        type Size = fn(&CollectionSizes) -> u64;
        let gauges: [(&str, &str, Size); 2] = [
            ("cloze_collection_documents", "Documents in each collection.", |c| c.documents),
            ("cloze_collection_vectors", "Vectors in each collection's HNSW graph.", |c| c.vectors),
        ];
        for (name, help, size) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
            for collection in collections {
                let label = escape(&collection.name);
                let _ = writeln!(out, "{name}{{collection=\"{label}\"}} {}", size(collection));
            }
        }
        out
    }
}

/// A label value as the text format wants it.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_are_cumulative_and_counts_split_by_status() {
        let metrics = Metrics::default();
        metrics.record("POST", "/collections/{name}/_search", 200, 0.002);
        metrics.record("POST", "/collections/{name}/_search", 200, 0.2);
        metrics.record("POST", "/collections/{name}/_search", 400, 20.0);
        let text =
            metrics.render(&[CollectionSizes { name: "a\"b".into(), documents: 3, vectors: 0 }]);
        let route = "method=\"POST\",route=\"/collections/{name}/_search\"";
        for line in [
            format!("cloze_http_requests_total{{{route},status=\"200\"}} 2"),
            format!("cloze_http_requests_total{{{route},status=\"400\"}} 1"),
            format!("cloze_http_request_duration_seconds_bucket{{{route},le=\"0.001\"}} 0"),
            format!("cloze_http_request_duration_seconds_bucket{{{route},le=\"0.0025\"}} 1"),
            format!("cloze_http_request_duration_seconds_bucket{{{route},le=\"10\"}} 2"),
            format!("cloze_http_request_duration_seconds_bucket{{{route},le=\"+Inf\"}} 3"),
            format!("cloze_http_request_duration_seconds_count{{{route}}} 3"),
            "cloze_collection_documents{collection=\"a\\\"b\"} 3".to_string(),
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line} in\n{text}");
        }
    }
}
