//! Notifications: every cycle Event baton reports (started, drained, rebooting, completed,
//! failed, gave up, cancelled) is also posted to the `--notify-url` webhooks, as generic JSON or
//! in the shape of a Slack or Microsoft Teams incoming webhook, with a message from a template.
//!
//! The core is pure: which Event is which notification ([`Kind::of_reason`]), what a URL means
//! ([`Endpoint::parse`]), the templates ([`Template`]) and the payloads ([`payload`]). The shell
//! ([`Notifier`]) never blocks the cycle: a notification is queued and the call returns; one
//! worker per URL posts it, each attempt bounded by `--notify-timeout`, with a few retries; a full
//! queue drops its oldest notification. Every outcome is counted in `baton_notifications_total`.
//! A URL is a secret (its path or query holds the token): only its scheme and host are ever
//! logged or shown in an error.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use crate::metrics::Metrics;

/// Notifications waiting per URL: a whole cycle's worth many times over; when a webhook is down
/// for hours, the newest news is worth more than the oldest, which is dropped (and counted).
pub const QUEUE: usize = 32;
/// Attempts per notification and URL: a brief outage or a restart of the receiver is ridden
/// out; a webhook down for longer is reported (the counter), not retried forever.
const ATTEMPTS: u32 = 3;
/// Pause before the first retry, doubled before each next one (1 s, 2 s).
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
/// How long a stopping agent waits for queued notifications (the reboot's own `rebooting` one
/// among them): enough for a responsive webhook, short next to the pod's 30 s grace period.
pub const FLUSH_GRACE: Duration = Duration::from_secs(3);
/// The most of an answer read (and thrown away): webhooks answer `ok` or a short error.
const MAX_ANSWER_BYTES: usize = 64 << 10;

/// What happened, as a notification says it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// The node holds the baton and is cordoned (`MaintenanceStarted`).
    Started,
    /// The node is drained (`Drained`).
    Drained,
    /// The reboot is triggered (`Rebooting`).
    Rebooting,
    /// The node rebooted and is back (`RebootCompleted`).
    Completed,
    /// The cycle stopped on a failure.
    Failed,
    /// baton stopped rebooting this node until a human looks (`RebootFailed`,
    /// `RebootLoopStopped`).
    GaveUp,
    /// The cycle ended without a reboot, by design (`MaintenanceCancelled`, `DryRun`).
    Cancelled,
}

impl Kind {
    /// Every kind, in a cycle's order.
    pub const ALL: [Kind; 7] = [
        Kind::Started,
        Kind::Drained,
        Kind::Rebooting,
        Kind::Completed,
        Kind::Failed,
        Kind::GaveUp,
        Kind::Cancelled,
    ];

    /// The notification for an Event baton reports, if the Event is one of a cycle's.
    pub fn of_reason(reason: &str) -> Option<Kind> {
        Some(match reason {
            "MaintenanceStarted" => Kind::Started,
            "Drained" => Kind::Drained,
            "Rebooting" => Kind::Rebooting,
            "RebootCompleted" => Kind::Completed,
            "DrainFailed" | "LeaseLost" | "MaintenanceStalled" | "InconsistentState"
            | "RebootNotTriggered" => Kind::Failed,
            // Both leave the node alone until a human looks: triggers that did not reboot the
            // host (`baton.dev/gave-up-boot-id`), or reboots that did not clear the flag.
            "RebootFailed" | "RebootLoopStopped" => Kind::GaveUp,
            "MaintenanceCancelled" | "DryRun" => Kind::Cancelled,
            _ => return None,
        })
    }

    /// Its name in payloads and in `{event}`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Started => "started",
            Kind::Drained => "drained",
            Kind::Rebooting => "rebooting",
            Kind::Completed => "completed",
            Kind::Failed => "failed",
            Kind::GaveUp => "gave-up",
            Kind::Cancelled => "cancelled",
        }
    }
}

/// One notification: an Event of a cycle on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// The node.
    pub node: String,
    /// What happened.
    pub kind: Kind,
    /// The Event's reason (`DrainFailed`, ...).
    pub reason: String,
    /// The Event's note: the details.
    pub message: String,
    /// Whether the Event is a warning.
    pub warning: bool,
    /// When it happened.
    pub time: SystemTime,
}

// === impl Template ===

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    Node,
    Event,
    Reason,
    Message,
}

/// A message template: text with the placeholders `{node}`, `{event}`, `{reason}` and
/// `{message}` (`{{` and `}}` for braces); kured's `%s` stands for the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template(Vec<Piece>);

impl Template {
    /// Parses a template; an unknown placeholder or a lone brace is refused.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut rest = s;
        while let Some(i) = rest.find(['{', '}', '%']) {
            text.push_str(&rest[..i]);
            let tail = &rest[i..];
            // A literal character and what follows it, or a placeholder and what follows it.
            let (literal, piece, after) = if let Some(r) = tail.strip_prefix("{{") {
                (Some('{'), None, r)
            } else if let Some(r) = tail.strip_prefix("}}") {
                (Some('}'), None, r)
            } else if let Some(r) = tail.strip_prefix("%s") {
                (None, Some(Piece::Node), r)
            } else if let Some(r) = tail.strip_prefix('%') {
                (Some('%'), None, r)
            } else if tail.starts_with('}') {
                return Err("a lone '}' (write '}}' for a brace)".to_owned());
            } else {
                let (name, r) = tail[1..]
                    .split_once('}')
                    .ok_or("a '{' without its '}' (write '{{' for a brace)")?;
                let piece = match name {
                    "node" => Piece::Node,
                    "event" => Piece::Event,
                    "reason" => Piece::Reason,
                    "message" => Piece::Message,
                    other => {
                        return Err(format!(
                            "unknown placeholder {{{other}}}: use {{node}}, {{event}}, {{reason}} or {{message}}"
                        ));
                    }
                };
                (None, Some(piece), r)
            };
            text.extend(literal);
            if let Some(piece) = piece {
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text)));
                }
                pieces.push(piece);
            }
            rest = after;
        }
        text.push_str(rest);
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Self(pieces))
    }

    /// The message for `notice`.
    pub fn render(&self, notice: &Notice) -> String {
        let mut out = String::new();
        for p in &self.0 {
            out.push_str(match p {
                Piece::Text(t) => t,
                Piece::Node => &notice.node,
                Piece::Event => notice.kind.as_str(),
                Piece::Reason => &notice.reason,
                Piece::Message => &notice.message,
            });
        }
        out
    }
}

/// A template for each [`Kind`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Templates {
    /// Indexed like [`Kind::ALL`].
    pub by_kind: [Template; 7],
}

impl Templates {
    /// The template of `kind`.
    pub fn of(&self, kind: Kind) -> &Template {
        let i = Kind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        &self.by_kind[i]
    }
}

// === impl Endpoint ===

/// The shape of a payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// baton's own JSON: every field of the notice, and the message as `text`.
    Json,
    /// A Slack incoming webhook (also Mattermost's and Rocket.Chat's): `{"text": ...}`.
    Slack,
    /// A Microsoft Teams incoming webhook or Workflows (Power Automate) webhook: a message with
    /// an Adaptive Card.
    Teams,
}

impl Format {
    /// Its name in logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Slack => "slack",
            Format::Teams => "teams",
        }
    }

    /// The format a plain `http(s)` URL's host implies.
    fn of_host(host: &str) -> Format {
        let host = host.to_ascii_lowercase();
        let under = |domain: &str| host == domain || host.ends_with(&format!(".{domain}"));
        if host == "hooks.slack.com" {
            Format::Slack
        } else if under("webhook.office.com")
            || host == "outlook.office.com"
            || under("logic.azure.com")
            || under("api.powerplatform.com")
        {
            Format::Teams
        } else {
            Format::Json
        }
    }
}

/// Where a notification goes and in which shape.
#[derive(Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// The payload's shape.
    pub format: Format,
    uri: http::Uri,
    /// A Slack bot name (shoutrrr's `slack://botname@...`).
    username: Option<String>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("format", &self.format)
            .field("url", &self.redacted())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Reads one `--notify-url`. The forms:
    ///
    /// - `http(s)://...`: generic JSON, or Slack's / Teams' shape when the host is
    ///   `hooks.slack.com` / `*.webhook.office.com` (or a Workflows host);
    /// - `json+http(s)://...`, `slack+http(s)://...`, `teams+http(s)://...`: that shape, posted to
    ///   the URL without the prefix;
    /// - kured's (shoutrrr's) Slack webhook URLs, `slack://[botname@]T.../B.../XXX` and
    ///   `slack://hook:T...-B...-XXX@webhook`, and Teams', `teams://group@tenant/altId/owner?host=
    ///   xxx.webhook.office.com`.
    ///
    /// An error never repeats the URL: it is a secret.
    pub fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (scheme, rest) = s
            .split_once("://")
            .ok_or("not a URL (expected scheme://...)")?;
        let scheme = scheme.to_ascii_lowercase();
        let (forced, scheme) = match scheme.split_once('+') {
            Some((f, s)) => (Some(f.to_owned()), s.to_owned()),
            None => (None, scheme),
        };
        match (forced.as_deref(), scheme.as_str()) {
            (None, "slack") => return Self::shoutrrr_slack(rest),
            (None, "teams") => return Self::shoutrrr_teams(rest),
            (_, "http" | "https") => {}
            (_, other) => {
                return Err(format!(
                    "unsupported scheme {:?}: use http(s)://, json+, slack+ or teams+http(s)://, slack:// or teams://",
                    shorten(other)
                ));
            }
        }
        let uri: http::Uri = format!("{scheme}://{rest}")
            .parse()
            .map_err(|_| format!("not a valid {scheme} URL"))?;
        let authority = uri.authority().ok_or("no host")?;
        if authority.as_str().contains('@') {
            return Err(
                "a user or password in the URL is not supported: put the token in the path or query"
                    .to_owned(),
            );
        }
        if authority.host().is_empty() {
            return Err("no host".to_owned());
        }
        let format = match forced.as_deref() {
            None => Format::of_host(authority.host()),
            Some("json") => Format::Json,
            Some("slack") => Format::Slack,
            Some("teams") => Format::Teams,
            Some(other) => {
                return Err(format!(
                    "unknown format {:?} before '+': use json, slack or teams",
                    shorten(other)
                ));
            }
        };
        Ok(Self {
            format,
            uri,
            username: None,
        })
    }

    /// shoutrrr's Slack webhook forms (kured's `--notify-url`); bot tokens (`xoxb`/`xoxp`,
    /// which post through Slack's API rather than a webhook) are refused.
    fn shoutrrr_slack(rest: &str) -> Result<Self, String> {
        let (rest, _query) = rest.split_once('?').unwrap_or((rest, ""));
        let rest = rest.trim_end_matches('/');
        let (user, host_path) = match rest.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, rest),
        };
        let (username, tokens): (Option<String>, Vec<&str>) = match user {
            // slack://hook:T-B-X@webhook
            Some(u) if u.starts_with("hook:") || u.starts_with("hook-") => {
                if host_path != "webhook" {
                    return Err("slack://hook:TOKEN@webhook expected".to_owned());
                }
                (None, u[5..].split('-').collect())
            }
            Some(u) if u.contains(':') || u.starts_with("xox") => {
                return Err(
                    "Slack bot tokens are not supported: use an incoming webhook (slack://T.../B.../XXX or https://hooks.slack.com/services/...)"
                        .to_owned(),
                );
            }
            // slack://[botname@]T/B/X
            u => (u.map(str::to_owned), host_path.split('/').collect()),
        };
        let ok = tokens.len() == 3
            && tokens
                .iter()
                .all(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_alphanumeric()));
        if !ok {
            return Err("a Slack webhook URL has three tokens: slack://T.../B.../XXX".to_owned());
        }
        let uri = format!("https://hooks.slack.com/services/{}", tokens.join("/"))
            .parse()
            .map_err(|_| "not a valid Slack webhook".to_owned())?;
        Ok(Self {
            format: Format::Slack,
            uri,
            username: username.filter(|u| !u.is_empty()),
        })
    }

    /// shoutrrr's Teams form: `teams://group@tenant/altId/groupOwner?host=xxx.webhook.office.com`.
    fn shoutrrr_teams(rest: &str) -> Result<Self, String> {
        const WANT: &str =
            "teams://group@tenant/altId/groupOwner?host=xxx.webhook.office.com expected";
        let (path, query) = rest.split_once('?').ok_or(WANT)?;
        let host = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("host="))
            .filter(|h| {
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
            })
            .ok_or(WANT)?;
        let parts: Vec<&str> = path.trim_end_matches('/').split('/').collect();
        let [group_tenant, alt, owner] = parts[..] else {
            return Err(WANT.to_owned());
        };
        let uri = format!("https://{host}/webhookb2/{group_tenant}/IncomingWebhook/{alt}/{owner}")
            .parse()
            .map_err(|_| WANT.to_owned())?;
        Ok(Self {
            format: Format::Teams,
            uri,
            username: None,
        })
    }

    /// The URL as logs may show it: scheme and host, never the path or query.
    pub fn redacted(&self) -> String {
        let scheme = self.uri.scheme_str().unwrap_or("?");
        let host = self.uri.host().unwrap_or("?");
        let port = self.uri.port().map(|p| format!(":{p}")).unwrap_or_default();
        format!("{}+{scheme}://{host}{port}/…", self.format.as_str())
    }

    /// Where the payload is posted.
    pub fn uri(&self) -> &http::Uri {
        &self.uri
    }
}

/// At most 20 characters of something a user wrote, for an error message.
fn shorten(s: &str) -> String {
    s.chars().take(20).collect()
}

// === Payloads ===

/// Slack's text escapes (its docs: `&`, `<` and `>`; the rest is sent as is).
fn slack_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The JSON body that tells `notice`, with the message `text`, in `endpoint`'s shape.
pub fn payload(endpoint: &Endpoint, notice: &Notice, text: &str) -> Value {
    let time = crate::node::format_time(notice.time);
    match endpoint.format {
        Format::Json => json!({
            "source": "baton",
            "node": notice.node,
            "event": notice.kind.as_str(),
            "reason": notice.reason,
            "message": notice.message,
            "warning": notice.warning,
            "time": time,
            "text": text,
        }),
        Format::Slack => {
            let mut v = json!({ "text": slack_escape(text) });
            if let Some(u) = &endpoint.username {
                v["username"] = u.clone().into();
            }
            v
        }
        Format::Teams => {
            let mut title = json!({
                "type": "TextBlock", "text": text, "wrap": true, "weight": "Bolder",
            });
            if notice.warning {
                title["color"] = "Attention".into();
            }
            let fact = |t: &str, v: &str| json!({"title": t, "value": v});
            json!({
                "type": "message",
                "attachments": [{
                    "contentType": "application/vnd.microsoft.card.adaptive",
                    "contentUrl": null,
                    "content": {
                        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                        "type": "AdaptiveCard",
                        "version": "1.4",
                        "body": [
                            title,
                            {"type": "FactSet", "facts": [
                                fact("Node", &notice.node),
                                fact("Event", notice.kind.as_str()),
                                fact("Reason", &notice.reason),
                                fact("Time", &time),
                            ]},
                        ],
                    },
                }],
            })
        }
    }
}

/// Pushes `item` at the back of `queue`, dropping the front one when `queue` already holds
/// `cap`; returns whether one was dropped.
pub fn push_bounded<T>(queue: &mut VecDeque<T>, item: T, cap: usize) -> bool {
    let dropped = queue.len() >= cap && queue.pop_front().is_some();
    queue.push_back(item);
    dropped
}

// === impl Notifier ===

/// Why one attempt failed.
#[derive(Debug, thiserror::Error)]
enum PostError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot reach it: {0}")]
    Unreachable(String),
    #[error("it answered HTTP {0}")]
    Status(u16),
    #[error("building the request: {0}")]
    Request(String),
}

impl PostError {
    /// Whether trying again may help: not when the receiver refuses the request itself.
    fn retryable(&self) -> bool {
        match self {
            PostError::Status(s) => *s >= 500 || *s == 408 || *s == 429,
            PostError::Request(_) => false,
            _ => true,
        }
    }
}

type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// One URL's queue.
#[derive(Debug)]
struct Queue {
    endpoint: Endpoint,
    items: Mutex<VecDeque<Bytes>>,
    ready: Notify,
}

#[derive(Debug)]
struct Shared {
    queues: Vec<Arc<Queue>>,
    templates: Templates,
    metrics: Metrics,
    /// Notifications queued or being posted, over every URL.
    outstanding: watch::Sender<usize>,
    /// Set by [`Notifier::flush`]: no more backoff, no more retries.
    closing: AtomicBool,
    closed: Notify,
}

/// Posts notifications in the background; a clone is cheap. The default notifies nobody.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    shared: Option<Arc<Shared>>,
}

/// What the notifier needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The URLs.
    pub endpoints: Vec<Endpoint>,
    /// The messages.
    pub templates: Templates,
    /// The deadline of one attempt, from connecting to the answer's last byte.
    pub timeout: Duration,
}

impl Notifier {
    /// A notifier for `settings`, and the future that delivers (one worker per URL; it never
    /// ends, so the caller supervises it). No URL: nothing to deliver, and no client is built.
    pub fn start(
        settings: Settings,
        metrics: Metrics,
    ) -> std::io::Result<(Self, impl Future<Output = ()> + Send + 'static)> {
        let client: Option<HttpClient> = if settings.endpoints.is_empty() {
            None
        } else {
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_native_roots()?
                .https_or_http()
                .enable_http1()
                .build();
            Some(Client::builder(TokioExecutor::new()).build(https))
        };
        let queues: Vec<Arc<Queue>> = settings
            .endpoints
            .into_iter()
            .map(|endpoint| {
                Arc::new(Queue {
                    endpoint,
                    items: Mutex::new(VecDeque::new()),
                    ready: Notify::new(),
                })
            })
            .collect();
        let shared = Arc::new(Shared {
            queues,
            templates: settings.templates,
            metrics,
            outstanding: watch::Sender::new(0),
            closing: AtomicBool::new(false),
            closed: Notify::new(),
        });
        let timeout = settings.timeout;
        let workers = {
            let shared = shared.clone();
            async move {
                let Some(client) = client else {
                    return std::future::pending().await;
                };
                let each = shared
                    .queues
                    .iter()
                    .map(|q| deliver(client.clone(), q.clone(), shared.clone(), timeout));
                futures::future::join_all(each).await;
            }
        };
        let notifier = Self {
            shared: (!shared.queues.is_empty()).then_some(shared),
        };
        Ok((notifier, workers))
    }

    /// Queues `notice` for every URL and returns at once.
    pub fn send(&self, notice: &Notice) {
        let Some(shared) = &self.shared else { return };
        let text = shared.templates.of(notice.kind).render(notice);
        for q in &shared.queues {
            let body = Bytes::from(payload(&q.endpoint, notice, &text).to_string());
            let dropped = {
                let mut items = q.items.lock().unwrap_or_else(|p| p.into_inner());
                push_bounded(&mut items, body, QUEUE)
            };
            if dropped {
                shared.count("dropped");
                tracing::warn!(url = %q.endpoint.redacted(), "notification queue full: dropped the oldest notification");
            } else {
                shared.outstanding.send_modify(|n| *n += 1);
            }
            q.ready.notify_one();
        }
    }

    /// The URLs, as logs may show them.
    pub fn redacted(&self) -> Vec<String> {
        self.shared
            .iter()
            .flat_map(|s| s.queues.iter().map(|q| q.endpoint.redacted()))
            .collect()
    }

    /// Lets what is queued go out before the agent stops: no more backoff or retries, and at
    /// most `grace` of waiting.
    pub async fn flush(&self, grace: Duration) {
        let Some(shared) = &self.shared else { return };
        shared.closing.store(true, Ordering::Relaxed);
        shared.closed.notify_waiters();
        let mut rx = shared.outstanding.subscribe();
        let left = tokio::time::timeout(grace, rx.wait_for(|n| *n == 0)).await;
        if left.is_err() {
            tracing::warn!(
                left = *shared.outstanding.borrow(),
                "stopping with notifications not delivered"
            );
        }
    }
}

impl Shared {
    fn count(&self, outcome: &str) {
        self.metrics
            .notifications
            .with_label_values(&[outcome])
            .inc();
    }

    fn closing(&self) -> bool {
        self.closing.load(Ordering::Relaxed)
    }
}

/// Posts `queue`'s notifications, one at a time, for ever.
async fn deliver(client: HttpClient, queue: Arc<Queue>, shared: Arc<Shared>, timeout: Duration) {
    loop {
        let next = queue
            .items
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        let Some(body) = next else {
            queue.ready.notified().await;
            continue;
        };
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1;
        let outcome = loop {
            match post(&client, queue.endpoint.uri(), body.clone(), timeout).await {
                Ok(()) => break "sent",
                Err(e) => {
                    let last = attempt >= ATTEMPTS || !e.retryable() || shared.closing();
                    if last {
                        tracing::warn!(url = %queue.endpoint.redacted(), attempts = attempt, error = %e, "could not deliver a notification");
                        break "failed";
                    }
                    tracing::debug!(url = %queue.endpoint.redacted(), attempt, error = %e, "notification not delivered; retrying");
                    let closed = shared.closed.notified();
                    if !shared.closing() {
                        tokio::select! {
                            () = tokio::time::sleep(backoff) => {}
                            () = closed => {}
                        }
                    }
                    backoff *= 2;
                    attempt += 1;
                }
            }
        };
        shared.count(outcome);
        shared.outstanding.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// One attempt: POST `body` to `uri`, all of it within `timeout`.
async fn post(
    client: &HttpClient,
    uri: &http::Uri,
    body: Bytes,
    timeout: Duration,
) -> Result<(), PostError> {
    let attempt = async {
        let req = http::Request::post(uri.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("baton/", env!("CARGO_PKG_VERSION")),
            )
            .body(Full::new(body))
            .map_err(|e| PostError::Request(e.to_string()))?;
        let resp = client
            .request(req)
            .await
            .map_err(|e| PostError::Unreachable(crate::text::error_chain(&e)))?;
        let status = resp.status();
        // Read the answer, so the connection can be reused; its content does not matter.
        let _ = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await;
        if status.is_success() {
            Ok(())
        } else {
            Err(PostError::Status(status.as_u16()))
        }
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .unwrap_or(Err(PostError::Timeout(timeout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(kind: Kind) -> Notice {
        Notice {
            node: "node-1".into(),
            kind,
            reason: "DrainFailed".into(),
            message: "pod a/b: <refused> & retried".into(),
            warning: true,
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123),
        }
    }

    #[test]
    fn every_cycle_event_is_a_notification_and_nothing_else_is() {
        for (reason, kind) in [
            ("MaintenanceStarted", Kind::Started),
            ("Drained", Kind::Drained),
            ("Rebooting", Kind::Rebooting),
            ("RebootCompleted", Kind::Completed),
            ("DrainFailed", Kind::Failed),
            ("LeaseLost", Kind::Failed),
            ("MaintenanceStalled", Kind::Failed),
            ("InconsistentState", Kind::Failed),
            ("RebootNotTriggered", Kind::Failed),
            ("RebootFailed", Kind::GaveUp),
            ("RebootLoopStopped", Kind::GaveUp),
            ("MaintenanceCancelled", Kind::Cancelled),
            ("DryRun", Kind::Cancelled),
        ] {
            assert_eq!(Kind::of_reason(reason), Some(kind), "{reason}");
        }
        for reason in ["DrainStarted", "DrainEscalated", "Whatever"] {
            assert_eq!(Kind::of_reason(reason), None, "{reason}");
        }
        // Every reason an abort reports is one.
        for r in crate::machine::AbortReason::ALL {
            assert!(Kind::of_reason(r.event_reason()).is_some(), "{r:?}");
        }
    }

    #[test]
    fn templates_fill_their_placeholders_and_refuse_unknown_ones() {
        let t = Template::parse("{event} on {node}: {reason} ({message}) {{x}} 100%").unwrap();
        assert_eq!(
            t.render(&notice(Kind::Failed)),
            "failed on node-1: DrainFailed (pod a/b: <refused> & retried) {x} 100%"
        );
        // kured's templates: %s is the node.
        let kured = Template::parse("Rebooting node %s").unwrap();
        assert_eq!(
            kured.render(&notice(Kind::Rebooting)),
            "Rebooting node node-1"
        );
        assert_eq!(
            Template::parse("").unwrap().render(&notice(Kind::Started)),
            ""
        );
        for (bad, says) in [
            ("{nod}", "unknown placeholder {nod}"),
            ("{node", "without its '}'"),
            ("node}", "lone '}'"),
        ] {
            let err = Template::parse(bad).unwrap_err();
            assert!(err.contains(says) && !err.contains('\n'), "{bad}: {err}");
        }
    }

    fn endpoint(s: &str) -> Endpoint {
        Endpoint::parse(s).unwrap()
    }

    #[test]
    fn the_format_follows_the_prefix_or_the_host() {
        for (url, format, posted) in [
            (
                "https://example.com/hook?t=1",
                Format::Json,
                "https://example.com/hook?t=1",
            ),
            (
                "http://10.0.0.1:9000/x",
                Format::Json,
                "http://10.0.0.1:9000/x",
            ),
            (
                "https://hooks.slack.com/services/T1/B2/X3",
                Format::Slack,
                "https://hooks.slack.com/services/T1/B2/X3",
            ),
            (
                "https://acme.webhook.office.com/webhookb2/a",
                Format::Teams,
                "https://acme.webhook.office.com/webhookb2/a",
            ),
            (
                "https://prod-1.westeurope.logic.azure.com:443/workflows/w",
                Format::Teams,
                "https://prod-1.westeurope.logic.azure.com:443/workflows/w",
            ),
            (
                "slack+http://127.0.0.1:8000/s",
                Format::Slack,
                "http://127.0.0.1:8000/s",
            ),
            (
                "TEAMS+HTTPS://chat.example.com/t",
                Format::Teams,
                "https://chat.example.com/t",
            ),
            (
                "json+https://hooks.slack.com/services/T/B/X",
                Format::Json,
                "https://hooks.slack.com/services/T/B/X",
            ),
            // kured's shoutrrr URLs.
            (
                "slack://T1/B2/X3",
                Format::Slack,
                "https://hooks.slack.com/services/T1/B2/X3",
            ),
            (
                "slack://hook:T1-B2-X3@webhook",
                Format::Slack,
                "https://hooks.slack.com/services/T1/B2/X3",
            ),
            (
                "teams://g@t/a/o?host=acme.webhook.office.com",
                Format::Teams,
                "https://acme.webhook.office.com/webhookb2/g@t/IncomingWebhook/a/o",
            ),
        ] {
            let e = endpoint(url);
            assert_eq!(
                (e.format, e.uri().to_string().as_str()),
                (format, posted),
                "{url}"
            );
        }
        assert_eq!(
            endpoint("slack://bot@T1/B2/X3").username.as_deref(),
            Some("bot")
        );
        assert!(
            !endpoint("https://attacker.com/hooks.slack.com")
                .format
                .eq(&Format::Slack)
        );
    }

    #[test]
    fn a_bad_url_is_refused_without_repeating_it() {
        for (url, says) in [
            ("hooks.slack.com/services/SECRET", "not a URL"),
            ("ftp://host/SECRET", "unsupported scheme"),
            ("xml+https://host/SECRET", "unknown format"),
            ("https://user:SECRET@host/x", "user or password"),
            ("slack://xoxb:SECRET@C0123", "bot tokens"),
            ("slack://SECRET", "three tokens"),
            ("slack://hook:SECRET@elsewhere", "webhook"),
            ("teams://SECRET@t/a/o", "teams://"),
            ("https:///SECRET", "URL"),
        ] {
            let err = Endpoint::parse(url).unwrap_err();
            assert!(err.contains(says), "{url}: {err}");
            assert!(!err.contains("SECRET"), "{url}: {err} repeats the secret");
        }
    }

    #[test]
    fn logs_see_only_the_scheme_and_host() {
        for (url, shown) in [
            (
                "https://hooks.slack.com/services/T1/B2/SECRET",
                "slack+https://hooks.slack.com/…",
            ),
            (
                "json+http://127.0.0.1:8080/SECRET?token=SECRET",
                "json+http://127.0.0.1:8080/…",
            ),
            (
                "slack://hook:T1-B2-SECRET@webhook",
                "slack+https://hooks.slack.com/…",
            ),
        ] {
            let e = endpoint(url);
            assert_eq!(e.redacted(), shown);
            assert!(!format!("{e:?}").contains("SECRET"), "{e:?}");
        }
    }

    #[test]
    fn generic_json_carries_every_field() {
        let n = notice(Kind::Failed);
        let p = payload(&endpoint("https://example.com/h"), &n, "the text");
        assert_eq!(
            p,
            json!({
                "source": "baton",
                "node": "node-1",
                "event": "failed",
                "reason": "DrainFailed",
                "message": "pod a/b: <refused> & retried",
                "warning": true,
                "time": "2023-11-14T22:13:20.123Z",
                "text": "the text",
            })
        );
    }

    #[test]
    fn slack_gets_escaped_text() {
        let n = notice(Kind::Completed);
        let p = payload(&endpoint("slack://T1/B2/X3"), &n, "a <b> & c");
        assert_eq!(p, json!({"text": "a &lt;b&gt; &amp; c"}));
        let p = payload(&endpoint("slack://baton@T1/B2/X3"), &n, "x");
        assert_eq!(p, json!({"text": "x", "username": "baton"}));
    }

    #[test]
    fn teams_gets_an_adaptive_card() {
        let n = notice(Kind::GaveUp);
        let p = payload(&endpoint("teams+https://t.example.com/x"), &n, "gave up");
        assert_eq!(p["type"], "message");
        let a = &p["attachments"][0];
        assert_eq!(a["contentType"], "application/vnd.microsoft.card.adaptive");
        let card = &a["content"];
        assert_eq!(card["type"], "AdaptiveCard");
        assert_eq!(card["body"][0]["text"], "gave up");
        assert_eq!(card["body"][0]["color"], "Attention");
        let facts = card["body"][1]["facts"].as_array().unwrap();
        assert_eq!(facts[0], json!({"title": "Node", "value": "node-1"}));
        assert_eq!(facts[1], json!({"title": "Event", "value": "gave-up"}));
        let calm = Notice {
            warning: false,
            ..notice(Kind::Completed)
        };
        let p = payload(&endpoint("teams+https://t.example.com/x"), &calm, "ok");
        assert!(
            p["attachments"][0]["content"]["body"][0]
                .get("color")
                .is_none()
        );
    }

    #[test]
    fn a_full_queue_drops_its_oldest() {
        let mut q = VecDeque::new();
        for i in 0..3 {
            assert!(!push_bounded(&mut q, i, 3));
        }
        assert!(push_bounded(&mut q, 3, 3));
        assert_eq!(q, [1, 2, 3]);
    }

    /// A receiver on a real socket: answers each request with `status` and sends each body on.
    async fn receiver(status: u16) -> (u16, tokio::sync::mpsc::UnboundedReceiver<String>) {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let tx = tx.clone();
                tokio::spawn(async move {
                    let mut s = BufReader::new(s);
                    loop {
                        let mut len = 0;
                        let mut line = String::new();
                        while s.read_line(&mut line).await.unwrap_or(0) > 0 && line != "\r\n" {
                            if let Some(v) =
                                line.to_ascii_lowercase().strip_prefix("content-length:")
                            {
                                len = v.trim().parse().unwrap();
                            }
                            line.clear();
                        }
                        if line.is_empty() {
                            return; // closed
                        }
                        let mut body = vec![0; len];
                        s.read_exact(&mut body).await.unwrap();
                        let _ = tx.send(String::from_utf8(body).unwrap());
                        let reply = format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\n\r\n");
                        s.get_mut().write_all(reply.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        (port, rx)
    }

    fn templates() -> Templates {
        Templates {
            by_kind: Kind::ALL.map(|_| Template::parse("{event} {node}").unwrap()),
        }
    }

    #[tokio::test]
    async fn delivery_retries_then_counts_and_never_blocks_the_sender() {
        let (ok_port, mut ok_seen) = receiver(200).await;
        let (bad_port, mut bad_seen) = receiver(503).await;
        let metrics = Metrics::new().unwrap();
        let (notifier, workers) = Notifier::start(
            Settings {
                endpoints: vec![
                    endpoint(&format!("http://127.0.0.1:{ok_port}/ok")),
                    endpoint(&format!("http://127.0.0.1:{bad_port}/bad")),
                ],
                templates: templates(),
                timeout: Duration::from_secs(5),
            },
            metrics.clone(),
        )
        .unwrap();
        let workers = tokio::spawn(workers);
        notifier.send(&notice(Kind::Started));
        let got: Value = serde_json::from_str(&ok_seen.recv().await.unwrap()).unwrap();
        assert_eq!(got["text"], "started node-1");
        // The first attempt failed (503, worth a retry); flushing ends the backoff and the
        // retries, so the notification counts as failed at once.
        bad_seen.recv().await.unwrap();
        notifier.flush(Duration::from_secs(10)).await;
        let count = |o: &str| metrics.notifications.with_label_values(&[o]).get();
        assert_eq!(
            (count("sent"), count("failed"), count("dropped")),
            (1, 1, 0)
        );
        let mut retried = 0;
        while bad_seen.try_recv().is_ok() {
            retried += 1;
        }
        assert!(retried <= 1, "{retried} retries after the flush");
        workers.abort();
    }
}
