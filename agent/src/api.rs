//! The Kubernetes API clients. Credentials come from `KUBECONFIG`, else `~/.kube/config`, else
//! the in-cluster service account, and a problem with them is one line naming the file. Every
//! request of the request client has one deadline, from connecting to the last byte of the
//! answer (a frozen API server cannot hang a step); the watch client, whose watches stay open for
//! minutes, bounds only connecting (TLS included) and sending.

use std::ffi::OsString;
use std::path::PathBuf;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use kube::client::ClientBuilder;
use kube::config::{KubeConfigOptions, Kubeconfig, KubeconfigError};
use kube::{Client, Config};
use tokio::time::{Instant, Sleep};
use tower::{BoxError, Layer, Service};

/// Where the credentials were looked for, and what is wrong with them.
#[derive(Debug, thiserror::Error)]
#[error("cannot load Kubernetes credentials from {from}: {problem}")]
pub struct CredentialsError {
    /// The file (and the variable that named it), or the in-cluster service account.
    pub from: String,
    /// What is wrong, on one line.
    pub problem: String,
}

/// A client that could not be built from the credentials.
#[derive(Debug, thiserror::Error)]
#[error("cannot build the API client")]
pub struct BuildError(#[from] kube::Error);

/// Where credentials may come from; [`load_config`] reads them from the environment.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The value of `KUBECONFIG` (a list of files), if set and not empty.
    pub kubeconfig_env: Option<OsString>,
    /// `~/.kube/config`, if it exists.
    pub home_kubeconfig: Option<PathBuf>,
    /// Whether `KUBERNETES_SERVICE_HOST` is set (the agent runs in a pod).
    pub in_cluster: bool,
}

impl Sources {
    /// The sources this process sees.
    pub fn from_env() -> Self {
        Self {
            kubeconfig_env: std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()),
            home_kubeconfig: std::env::var_os("HOME")
                .map(|h| PathBuf::from(h).join(".kube").join("config"))
                .filter(|p| p.exists()),
            in_cluster: std::env::var_os("KUBERNETES_SERVICE_HOST").is_some(),
        }
    }
}

/// The first line of `text` (YAML errors go on with a snippet of the file).
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
        .to_owned()
}

/// What is wrong with a kubeconfig, for people.
fn kubeconfig_problem(e: &KubeconfigError) -> String {
    match e {
        KubeconfigError::CurrentContextNotSet => {
            "it names no current-context (is it a kubeconfig file?)".to_owned()
        }
        KubeconfigError::ReadConfig(io, _) => format!("cannot read it: {io}"),
        other => one_line(&other.to_string()),
    }
}

/// Loads the credentials, in kubectl's order: the files in `KUBECONFIG`, else `~/.kube/config`,
/// else the in-cluster service account. A file that is named or present but unusable is an
/// error naming it, never a silent fall-back to another source.
pub async fn load_config(sources: &Sources) -> Result<Config, CredentialsError> {
    let (from, kubeconfig) = if let Some(list) = &sources.kubeconfig_env {
        let mut merged = Kubeconfig::default();
        for path in std::env::split_paths(list).filter(|p| !p.as_os_str().is_empty()) {
            let from = format!("{} (named by KUBECONFIG)", path.display());
            let file = Kubeconfig::read_from(&path).map_err(|e| CredentialsError {
                problem: kubeconfig_problem(&e),
                from: from.clone(),
            })?;
            merged = merged.merge(file).map_err(|e| CredentialsError {
                problem: kubeconfig_problem(&e),
                from,
            })?;
        }
        (format!("KUBECONFIG={}", list.to_string_lossy()), merged)
    } else if let Some(path) = &sources.home_kubeconfig {
        let from = path.display().to_string();
        let file = Kubeconfig::read_from(path).map_err(|e| CredentialsError {
            problem: kubeconfig_problem(&e),
            from: from.clone(),
        })?;
        (from, file)
    } else if sources.in_cluster {
        let mut config = Config::incluster().map_err(|e| CredentialsError {
            from: "the in-cluster service account".to_owned(),
            problem: one_line(&e.to_string()),
        })?;
        config.apply_debug_overrides();
        return Ok(config);
    } else {
        return Err(CredentialsError {
            from: "anywhere".to_owned(),
            problem: "KUBECONFIG is not set, ~/.kube/config does not exist, and \
                      KUBERNETES_SERVICE_HOST is not set (not in a pod)"
                .to_owned(),
        });
    };
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|e| CredentialsError {
            problem: kubeconfig_problem(&e),
            from,
        })?;
    config.apply_debug_overrides();
    Ok(config)
}

/// The two API clients for the credentials this process sees: see [`clients_from`].
pub async fn clients(api_timeout: Duration, who: &str) -> anyhow::Result<(Client, Client)> {
    let config = load_config(&Sources::from_env()).await?;
    Ok(clients_from(config, api_timeout, who)?)
}

/// The two API clients: one for requests, each with one deadline of `api_timeout`; one for
/// watches, whose connecting and sending are bounded by `api_timeout` but not the answer.
/// Neither retries 429s by itself: a refused eviction must reach the drain logic. Both identify
/// themselves as `baton/<version> (<who>)` in audit logs.
pub fn clients_from(
    mut config: Config,
    api_timeout: Duration,
    who: &str,
) -> Result<(Client, Client), BuildError> {
    let agent_name = format!("baton/{} ({who})", env!("CARGO_PKG_VERSION"));
    if let Ok(value) = http::HeaderValue::from_str(&agent_name) {
        config.headers.push((http::header::USER_AGENT, value));
    }
    config.default_retry = false;
    config.connect_timeout = Some(api_timeout);
    config.write_timeout = Some(api_timeout);
    // The deadline covers reading; a read timeout would only count a pooled connection's idle
    // time against the next request.
    config.read_timeout = None;
    let client = ClientBuilder::try_from(config.clone())?
        .with_layer(&Deadline(api_timeout))
        .build();
    let watch_client = Client::try_from(config)?;
    Ok((client, watch_client))
}

/// A request that did not complete within its deadline.
#[derive(Debug, thiserror::Error)]
#[error("no complete answer from the API server within {}", humantime::format_duration(*.0))]
pub struct DeadlineExceeded(pub Duration);

/// A tower layer that gives every request one deadline, from the call to the end of the
/// answer's body.
#[derive(Debug, Clone, Copy)]
pub struct Deadline(pub Duration);

impl<S> Layer<S> for Deadline {
    type Service = WithDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        WithDeadline {
            inner,
            timeout: self.0,
        }
    }
}

/// A service whose every request has one deadline (see [`Deadline`]).
#[derive(Debug, Clone)]
pub struct WithDeadline<S> {
    inner: S,
    timeout: Duration,
}

impl<S, Req, B> Service<Req> for WithDeadline<S>
where
    S: Service<Req, Response = http::Response<B>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
{
    type Response = http::Response<DeadlineBody<B>>;
    type Error = BoxError;
    type Future =
        Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send + 'static>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let timeout = self.timeout;
        let deadline = Instant::now() + timeout;
        let answer = self.inner.call(req);
        Box::pin(async move {
            match tokio::time::timeout_at(deadline, answer).await {
                Ok(Ok(response)) => Ok(response.map(|body| DeadlineBody {
                    body,
                    deadline: Box::pin(tokio::time::sleep_until(deadline)),
                    timeout,
                })),
                Ok(Err(e)) => Err(e.into()),
                Err(_) => Err(DeadlineExceeded(timeout).into()),
            }
        })
    }
}

/// An answer's body that fails once its request's deadline passes.
#[derive(Debug)]
pub struct DeadlineBody<B> {
    body: B,
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl<B> Body for DeadlineBody<B>
where
    B: Body + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = B::Data;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(DeadlineExceeded(this.timeout).into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Node;
    use kube::Api;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// Slack for a loaded two-core machine: an error must come within this many deadlines.
    const SLACK: u32 = 5;

    /// A peer that accepts connections and never says a word (nor reads one).
    async fn frozen_peer() -> (u16, tokio::task::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let mut held: Vec<TcpStream> = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        (port, task)
    }

    /// A peer that answers every request with a Node whose body ends with a space every
    /// `every`, for about `total`.
    async fn trickling_peer(every: Duration, total: Duration) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut seen = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                        let Ok(n) = s.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        seen.extend_from_slice(&buf[..n]);
                    }
                    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n\
                                transfer-encoding: chunked\r\n\r\n";
                    let body = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n1"}"#;
                    let first = format!("{head}{:x}\r\n{body}\r\n", body.len());
                    if s.write_all(first.as_bytes()).await.is_err() {
                        return;
                    }
                    // Then a space every `every` (JSON allows them), and the closing brace.
                    let pad = usize::try_from(total.as_millis() / every.as_millis()).unwrap();
                    for _ in 0..pad {
                        tokio::time::sleep(every).await;
                        if s.write_all(b"1\r\n \r\n").await.is_err() {
                            return;
                        }
                    }
                    let _ = s.write_all(b"1\r\n}\r\n0\r\n\r\n").await;
                });
            }
        });
        port
    }

    fn config(url: &str) -> Config {
        Config::new(url.parse().unwrap())
    }

    /// Gets Node n1 with `client`, giving up after `limit`; the result and how long it took.
    async fn get_node(client: Client, limit: Duration) -> (Result<Node, kube::Error>, Duration) {
        let started = Instant::now();
        let api: Api<Node> = Api::all(client);
        let result = tokio::time::timeout(limit, api.get("n1"))
            .await
            .expect("an answer or an error within the limit: the request hangs");
        (result, started.elapsed())
    }

    #[tokio::test]
    async fn a_frozen_api_server_fails_a_request_at_its_deadline_even_mid_handshake() {
        let (port, _peer) = frozen_peer().await;
        let timeout = Duration::from_secs(1);
        // TLS: the handshake itself never completes (as with a frozen API server).
        let (client, watch_client) = clients_from(
            config(&format!("https://127.0.0.1:{port}")),
            timeout,
            "test",
        )
        .unwrap();
        for c in [client, watch_client] {
            let (result, took) = get_node(c, timeout * SLACK).await;
            assert!(result.is_err(), "{result:?}");
            assert!(took >= timeout / 2, "failed before the deadline: {took:?}");
        }
        // Plain HTTP: the request is sent and no answer ever comes.
        let (client, _) =
            clients_from(config(&format!("http://127.0.0.1:{port}")), timeout, "test").unwrap();
        let (result, _) = get_node(client, timeout * SLACK).await;
        let err = result.unwrap_err();
        assert!(
            std::error::Error::source(&err).is_some_and(|s| s.to_string().contains("within 1s")),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn an_answer_that_trickles_fails_at_the_deadline_but_a_watch_is_not_cut() {
        let every = Duration::from_millis(100);
        let timeout = Duration::from_millis(500);
        let port = trickling_peer(every, timeout * 3).await;
        let (client, watch_client) =
            clients_from(config(&format!("http://127.0.0.1:{port}")), timeout, "test").unwrap();
        let (result, _) = get_node(client, timeout * SLACK).await;
        assert!(result.is_err(), "{result:?}");
        // The same answer through the watch client arrives whole, long after the deadline.
        let (result, took) = get_node(watch_client, timeout * 20).await;
        assert_eq!(result.unwrap().metadata.name.as_deref(), Some("n1"));
        assert!(took > timeout * 2, "{took:?}");
    }

    #[tokio::test]
    async fn unusable_kubeconfigs_are_named_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let cases = [
            (write("yaml", "hello: world\n"), "no current-context"),
            (write("garbage", "{{{ not yaml at all\n\t:"), "YAML"),
            (dir.path().join("missing"), "cannot read it"),
            (
                write(
                    "no-server",
                    "apiVersion: v1\nkind: Config\ncurrent-context: c\ncontexts:\n- name: c\n  context: {cluster: k, user: u}\nclusters:\n- name: k\n  cluster: {}\nusers:\n- name: u\n  user: {}\n",
                ),
                "url",
            ),
        ];
        for (path, problem) in cases {
            let sources = Sources {
                kubeconfig_env: Some(path.clone().into_os_string()),
                ..Sources::default()
            };
            let err = load_config(&sources).await.unwrap_err().to_string();
            assert!(!err.contains('\n'), "{err}");
            assert!(err.contains(&path.display().to_string()), "{err}");
            assert!(err.contains("KUBECONFIG"), "{err}");
            assert!(err.contains(problem), "{err} should say {problem:?}");
            // The same file as ~/.kube/config is named too.
            let sources = Sources {
                home_kubeconfig: Some(path.clone()),
                ..Sources::default()
            };
            let err = load_config(&sources).await.unwrap_err().to_string();
            assert!(err.contains(&path.display().to_string()), "{err}");
        }
        let err = load_config(&Sources::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("KUBECONFIG is not set"), "{err}");
        let good = write(
            "good",
            "apiVersion: v1\nkind: Config\ncurrent-context: c\ncontexts:\n- name: c\n  context: {cluster: k, user: u}\nclusters:\n- name: k\n  cluster: {server: 'https://10.0.0.1:6443'}\nusers:\n- name: u\n  user: {token: t}\n",
        );
        let sources = Sources {
            kubeconfig_env: Some(good.into_os_string()),
            ..Sources::default()
        };
        let config = load_config(&sources).await.unwrap();
        assert_eq!(config.cluster_url.to_string(), "https://10.0.0.1:6443/");
    }
}
