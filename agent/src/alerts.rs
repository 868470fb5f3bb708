//! Prometheus alerts as a blocker: while an active alert passes the filter, no node starts a
//! cycle. The filter is a pure function; the query is a single GET of `/api/v1/alerts`. When
//! Prometheus cannot be asked, baton fails closed: "could not check" blocks, it never permits.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use regex::Regex;
use serde::Deserialize;

/// How many blocking alert names a reason lists: enough to act on, short enough for a Node
/// annotation when hundreds fire.
const NAMES_SHOWN: usize = 10;
/// The largest alerts response read: thousands of alerts fit; a runaway body does not.
const MAX_RESPONSE_BYTES: usize = 8 << 20;

/// An active alert as Prometheus reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// The `alertname` label.
    pub name: String,
    /// Whether it is firing (else pending: its `for` duration has not passed yet).
    pub firing: bool,
}

/// Which active alerts block. Names are matched with unanchored regexes, as kured does.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Only alerts whose name matches count (`--alert-filter-match-only`, or
    /// `--alert-include-regexp`).
    pub include: Option<Regex>,
    /// Alerts whose name matches never count (`--alert-filter-regexp`).
    pub exclude: Option<Regex>,
    /// Pending alerts do not count (`--alert-firing-only`).
    pub firing_only: bool,
}

impl Filter {
    /// Whether `alert` blocks a cycle.
    pub fn blocks(&self, alert: &Alert) -> bool {
        (alert.firing || !self.firing_only)
            && self
                .include
                .as_ref()
                .is_none_or(|r| r.is_match(&alert.name))
            && self
                .exclude
                .as_ref()
                .is_none_or(|r| !r.is_match(&alert.name))
    }

    /// The names of the alerts that block, sorted, without repeats (an alert fires once per
    /// label set).
    pub fn blocking(&self, alerts: &[Alert]) -> Vec<String> {
        let mut names: Vec<String> = alerts
            .iter()
            .filter(|a| self.blocks(a))
            .map(|a| a.name.clone())
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

/// Why the alerts could not be read.
#[derive(Debug, thiserror::Error)]
pub enum AlertsError {
    /// No answer within the timeout.
    #[error("no answer from {url} within {timeout:?}")]
    Timeout {
        /// The URL asked.
        url: String,
        /// The timeout.
        timeout: Duration,
    },
    /// The request could not be built.
    #[error("building the request to {url}: {reason}")]
    Request {
        /// The URL asked.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The connection failed.
    #[error("cannot reach {url}")]
    Unreachable {
        /// The URL asked.
        url: String,
        /// What went wrong.
        #[source]
        source: hyper_util::client::legacy::Error,
    },
    /// Prometheus answered with an error status.
    #[error("{url} answered HTTP {status}")]
    Status {
        /// The URL asked.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The body could not be read.
    #[error("reading the answer of {url}: {reason}")]
    Body {
        /// The URL asked.
        url: String,
        /// What went wrong.
        reason: String,
    },
    /// The body is not an alerts response.
    #[error("{url} did not answer with Prometheus alerts: {reason}")]
    Malformed {
        /// The URL asked.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

#[derive(Deserialize)]
struct Response {
    status: String,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    data: Option<Data>,
}

#[derive(Deserialize)]
struct Data {
    alerts: Vec<RawAlert>,
}

#[derive(Deserialize)]
struct RawAlert {
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    state: String,
}

/// Parses the body of `GET /api/v1/alerts`. An alert without a name is kept with an empty
/// name, so an exclude-only filter still counts it.
pub fn parse(body: &[u8]) -> Result<Vec<Alert>, String> {
    let r: Response = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    if r.status != "success" {
        return Err(format!(
            "status {:?}: {}",
            r.status,
            r.error.unwrap_or_default()
        ));
    }
    let data = r.data.ok_or("no data")?;
    Ok(data
        .alerts
        .into_iter()
        .map(|a| Alert {
            name: a.labels.get("alertname").cloned().unwrap_or_default(),
            firing: a.state == "firing",
        })
        .collect())
}

/// The base URL of a Prometheus server (`http://` or `https://`, optional path prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrometheusUrl {
    base: http::Uri,
    alerts: http::Uri,
}

impl PrometheusUrl {
    /// Validates `s` (for `--prometheus-url`).
    pub fn parse(s: &str) -> Result<Self, String> {
        let base: http::Uri = s.parse().map_err(|e| format!("not a URL: {e}"))?;
        match base.scheme_str() {
            Some("http" | "https") => {}
            _ => return Err("must start with http:// or https://".to_owned()),
        }
        if base.authority().is_none_or(|a| a.host().is_empty()) {
            return Err("must name a host".to_owned());
        }
        if base.query().is_some() {
            return Err("must not have a query (?...)".to_owned());
        }
        let prefix = base.path().trim_end_matches('/');
        let mut parts = base.clone().into_parts();
        parts.path_and_query = Some(
            format!("{prefix}/api/v1/alerts")
                .parse()
                .map_err(|e| format!("not a URL path: {e}"))?,
        );
        let alerts = http::Uri::from_parts(parts).map_err(|e| format!("not a URL: {e}"))?;
        Ok(Self { base, alerts })
    }

    /// The alerts endpoint under this base URL.
    pub fn alerts(&self) -> &http::Uri {
        &self.alerts
    }
}

impl std::fmt::Display for PrometheusUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.base.fmt(f)
    }
}

/// Reads the active alerts from one Prometheus server.
#[derive(Clone)]
pub struct Prometheus {
    client: Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>,
    url: http::Uri,
    timeout: Duration,
}

impl std::fmt::Debug for Prometheus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prometheus")
            .field("url", &self.url)
            .finish()
    }
}

impl Prometheus {
    /// A client for `base`, each request bounded by `timeout`. TLS trusts the system's roots.
    pub fn new(base: &PrometheusUrl, timeout: Duration) -> std::io::Result<Self> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(https),
            url: base.alerts().clone(),
            timeout,
        })
    }

    /// The active (pending or firing) alerts.
    pub async fn alerts(&self) -> Result<Vec<Alert>, AlertsError> {
        let url = self.url.to_string();
        let ask = async {
            let req = http::Request::get(self.url.clone())
                .header(http::header::ACCEPT, "application/json")
                .header(
                    http::header::USER_AGENT,
                    concat!("baton/", env!("CARGO_PKG_VERSION")),
                )
                .body(Empty::new())
                .map_err(|e| AlertsError::Request {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
            let resp =
                self.client
                    .request(req)
                    .await
                    .map_err(|source| AlertsError::Unreachable {
                        url: url.clone(),
                        source,
                    })?;
            let status = resp.status();
            let body = Limited::new(resp.into_body(), MAX_RESPONSE_BYTES)
                .collect()
                .await
                .map_err(|e| AlertsError::Body {
                    url: url.clone(),
                    reason: e.to_string(),
                })?
                .to_bytes();
            if !status.is_success() {
                return Err(AlertsError::Status {
                    url: url.clone(),
                    status: status.as_u16(),
                });
            }
            parse(&body).map_err(|reason| AlertsError::Malformed {
                url: url.clone(),
                reason,
            })
        };
        tokio::time::timeout(self.timeout, ask)
            .await
            .unwrap_or_else(|_| {
                Err(AlertsError::Timeout {
                    url: url.clone(),
                    timeout: self.timeout,
                })
            })
    }

    /// Why no cycle may start because of alerts, if so. Fails closed: an error blocks.
    pub async fn gate(&self, filter: &Filter) -> Option<String> {
        match self.alerts().await {
            Ok(alerts) => describe(&filter.blocking(&alerts)),
            Err(e) => Some(format!(
                "blocked: could not check Prometheus alerts ({})",
                crate::text::error_chain(&e)
            )),
        }
    }
}

/// The blocking alerts for humans (a Node annotation, a log line): the first few names, then
/// how many more; `None` when nothing blocks.
pub fn describe(names: &[String]) -> Option<String> {
    let (shown, rest) = names.split_at(names.len().min(NAMES_SHOWN));
    let more = if rest.is_empty() {
        String::new()
    } else {
        format!(" and {} more", rest.len())
    };
    (!names.is_empty()).then(|| {
        format!(
            "blocked by active Prometheus alert(s): {}{more}",
            shown.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(name: &str, firing: bool) -> Alert {
        Alert {
            name: name.to_owned(),
            firing,
        }
    }

    fn re(s: &str) -> Option<Regex> {
        Some(Regex::new(s).unwrap())
    }

    #[test]
    fn every_active_alert_blocks_by_default() {
        let f = Filter::default();
        assert!(f.blocks(&alert("NodeDown", true)));
        assert!(f.blocks(&alert("NodeDown", false)), "pending counts too");
    }

    #[test]
    fn firing_only_ignores_pending_alerts() {
        let f = Filter {
            firing_only: true,
            ..Filter::default()
        };
        assert!(f.blocks(&alert("NodeDown", true)));
        assert!(!f.blocks(&alert("NodeDown", false)));
    }

    #[test]
    fn exclude_and_include_match_the_alert_name() {
        let exclude = Filter {
            exclude: re("^(Watchdog|InfoInhibitor)$"),
            ..Filter::default()
        };
        assert!(!exclude.blocks(&alert("Watchdog", true)));
        assert!(exclude.blocks(&alert("KubeNodeNotReady", true)));
        let include = Filter {
            include: re("^Kube"),
            ..Filter::default()
        };
        assert!(include.blocks(&alert("KubeNodeNotReady", true)));
        assert!(!include.blocks(&alert("Watchdog", true)));
        let both = Filter {
            include: re("^Kube"),
            exclude: re("CPUThrottling"),
            firing_only: false,
        };
        assert!(both.blocks(&alert("KubeNodeNotReady", false)));
        assert!(!both.blocks(&alert("KubeCPUThrottlingHigh", true)));
        // Unanchored, like kured's: a bare word matches anywhere in the name.
        let word = Filter {
            exclude: re("Throttling"),
            ..Filter::default()
        };
        assert!(!word.blocks(&alert("CPUThrottlingHigh", true)));
    }

    #[test]
    fn blocking_names_are_sorted_and_unique() {
        let f = Filter {
            firing_only: true,
            ..Filter::default()
        };
        let alerts = [
            alert("B", true),
            alert("A", true),
            alert("B", true),
            alert("C", false),
        ];
        assert_eq!(f.blocking(&alerts), ["A", "B"]);
        assert!(f.blocking(&[]).is_empty());
    }

    #[test]
    fn the_reason_lists_a_few_names_then_counts_the_rest() {
        assert_eq!(describe(&[]), None);
        let two = ["A".to_owned(), "B".to_owned()];
        assert_eq!(
            describe(&two).unwrap(),
            "blocked by active Prometheus alert(s): A, B"
        );
        let many: Vec<String> = (0..25).map(|i| format!("Alert{i:02}")).collect();
        let why = describe(&many).unwrap();
        assert!(why.contains("Alert09") && !why.contains("Alert10"), "{why}");
        assert!(why.ends_with(" and 15 more"), "{why}");
    }

    #[test]
    fn parses_the_alerts_endpoint() {
        let body = br#"{"status":"success","data":{"alerts":[
            {"labels":{"alertname":"Up","severity":"page"},"annotations":{},"state":"firing",
             "activeAt":"2026-11-26T10:00:00Z","value":"1e+00"},
            {"labels":{"alertname":"Slow"},"state":"pending"},
            {"labels":{},"state":"firing"}]}}"#;
        assert_eq!(
            parse(body).unwrap(),
            [alert("Up", true), alert("Slow", false), alert("", true)]
        );
    }

    #[test]
    fn anything_else_is_an_error_not_an_empty_list() {
        for body in [
            &br#"{"status":"error","errorType":"bad_data","error":"boom"}"#[..],
            br#"{"status":"success"}"#,
            br#"{"status":"success","data":{}}"#,
            b"<html>proxy error</html>",
            b"",
        ] {
            assert!(
                parse(body).is_err(),
                "{} parsed",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn urls_are_validated_and_keep_their_prefix() {
        let u = PrometheusUrl::parse("http://prometheus.monitoring:9090").unwrap();
        assert_eq!(
            u.alerts().to_string(),
            "http://prometheus.monitoring:9090/api/v1/alerts"
        );
        let u = PrometheusUrl::parse("https://example.com/prom/").unwrap();
        assert_eq!(
            u.alerts().to_string(),
            "https://example.com/prom/api/v1/alerts"
        );
        for bad in [
            "",
            "prometheus:9090",
            "ftp://x",
            "http://x/?a=b",
            "http:///x",
        ] {
            assert!(PrometheusUrl::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[tokio::test]
    async fn an_unreachable_server_blocks() {
        // A port nothing listens on: bind, note the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = PrometheusUrl::parse(&format!("http://127.0.0.1:{port}")).unwrap();
        let p = Prometheus::new(&url, Duration::from_secs(5)).unwrap();
        let why = p.gate(&Filter::default()).await.expect("fails closed");
        assert!(why.contains("could not check"), "{why}");
        assert!(why.contains(&port.to_string()), "names the URL: {why}");
    }
}
