//! The host's metrics in the Prometheus text format (version 0.0.4), served at `/metrics`.
//!
//! Per instance: fuel, memory, local disk, restarts, requests, messages processed and
//! redeliveries. Per web role: request counts by status class and a latency histogram. Per
//! queue of each service: its approximate depth.

use std::fmt::Write;

use rolehost_storage::ListOptions;

use super::Fabric;
use crate::web::LATENCY_BUCKETS;
use crate::worker::{InstanceStatus, Phase};

/// A Prometheus label value, escaped.
fn esc(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Family<'a> {
    out: &'a mut String,
}

impl Family<'_> {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        let labels: Vec<String> = labels
            .iter()
            .map(|(k, v)| format!("{k}=\"{}\"", esc(v)))
            .collect();
        let _ = writeln!(self.out, "{name}{{{}}} {value}", labels.join(","));
    }
}

/// Renders every metric of the host.
pub fn render(fabric: &Fabric) -> String {
    let mut out = String::new();
    let services = fabric.running();
    let mut f = Family { out: &mut out };

    type Pick = fn(&InstanceStatus) -> u64;
    let per_instance: [(&str, &str, &str, Pick); 10] = [
        (
            "rolehost_instance_fuel_total",
            "counter",
            "Fuel the instance used (its CPU).",
            |s| s.usage.fuel,
        ),
        (
            "rolehost_instance_fuel_per_second_quota",
            "gauge",
            "The instance's CPU share, fuel per second.",
            |s| s.usage.fuel_per_sec,
        ),
        (
            "rolehost_instance_memory_bytes",
            "gauge",
            "The instance's linear memory.",
            |s| s.usage.memory_bytes,
        ),
        (
            "rolehost_instance_memory_quota_bytes",
            "gauge",
            "The instance's memory cap.",
            |s| s.usage.memory_cap,
        ),
        (
            "rolehost_instance_local_disk_bytes",
            "gauge",
            "Bytes in the instance's local resources.",
            |s| s.usage.disk_bytes,
        ),
        (
            "rolehost_instance_restarts_total",
            "counter",
            "Times the instance was recycled.",
            |s| u64::from(s.restarts),
        ),
        (
            "rolehost_instance_requests_total",
            "counter",
            "Requests the instance answered.",
            |s| s.usage.requests,
        ),
        (
            "rolehost_instance_messages_processed_total",
            "counter",
            "Queue messages the instance deleted.",
            |s| s.usage.messages_processed,
        ),
        (
            "rolehost_instance_redeliveries_total",
            "counter",
            "Queue messages the instance received with a dequeue count over 1.",
            |s| s.usage.redeliveries,
        ),
        (
            "rolehost_instance_up",
            "gauge",
            "1 when the instance is running (taking work), 0 otherwise.",
            |s| u64::from(s.phase == Phase::Running),
        ),
    ];
    let statuses: Vec<(String, Vec<InstanceStatus>)> = services
        .iter()
        .map(|s| (s.name().to_string(), s.status()))
        .collect();
    for (name, kind, help, pick) in per_instance {
        f.head(name, kind, help);
        for (service, list) in &statuses {
            for s in list {
                let labels = [
                    ("service", service.as_str()),
                    ("role", s.role.as_str()),
                    ("instance", s.instance_id.as_str()),
                ];
                f.sample(name, &labels, pick(s));
            }
        }
    }

    // Web roles: requests by status class, and latency.
    let web: Vec<(String, String, std::sync::Arc<crate::web::WebRole>)> = services
        .iter()
        .flat_map(|s| {
            s.web_metrics()
                .into_iter()
                .map(|(role, w)| (s.name().to_string(), role, w))
                .collect::<Vec<_>>()
        })
        .collect();
    let name = "rolehost_http_requests_total";
    f.head(
        name,
        "counter",
        "Requests a web role answered, by status class.",
    );
    for (service, role, w) in &web {
        for (class, count) in w.metrics().by_class.iter().enumerate().skip(1) {
            let code = format!("{class}xx");
            let labels = [
                ("service", service.as_str()),
                ("role", role.as_str()),
                ("code", code.as_str()),
            ];
            f.sample(
                name,
                &labels,
                count.load(std::sync::atomic::Ordering::Relaxed),
            );
        }
    }
    let name = "rolehost_http_request_duration_seconds";
    f.head(
        name,
        "histogram",
        "Time from a request's arrival to its response's head.",
    );
    for (service, role, w) in &web {
        let m = w.metrics();
        for (bound, count) in LATENCY_BUCKETS.iter().zip(&m.buckets) {
            let le = bound.to_string();
            let labels = [
                ("service", service.as_str()),
                ("role", role.as_str()),
                ("le", le.as_str()),
            ];
            f.sample(
                &format!("{name}_bucket"),
                &labels,
                count.load(std::sync::atomic::Ordering::Relaxed),
            );
        }
        let total = m.count.load(std::sync::atomic::Ordering::Relaxed);
        let labels = [
            ("service", service.as_str()),
            ("role", role.as_str()),
            ("le", "+Inf"),
        ];
        f.sample(&format!("{name}_bucket"), &labels, total);
        let labels = [("service", service.as_str()), ("role", role.as_str())];
        let sum = m.sum_us.load(std::sync::atomic::Ordering::Relaxed) as f64 / 1e6;
        f.sample(&format!("{name}_sum"), &labels, sum);
        f.sample(&format!("{name}_count"), &labels, total);
    }

    // Queue depths.
    let name = "rolehost_queue_messages";
    f.head(
        name,
        "gauge",
        "Approximate number of messages in a queue (visible or not).",
    );
    for s in &services {
        let (storage, account) = s.storage();
        let mut options = ListOptions::default();
        while let Ok(page) = storage.list_queues(&account, &options) {
            for q in &page.items {
                if let Ok(p) = storage.get_queue_properties(&account, &q.name) {
                    let labels = [("service", s.name()), ("queue", q.name.as_str())];
                    f.sample(name, &labels, p.approximate_message_count);
                }
            }
            match page.next_marker {
                Some(m) => options.marker = Some(m),
                None => break,
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc(r#"a"b\c"#), r#"a\"b\\c"#);
        let mut out = String::new();
        let mut f = Family { out: &mut out };
        f.sample("m", &[("k", "v\"")], 3);
        assert_eq!(out, "m{k=\"v\\\"\"} 3\n");
    }
}
