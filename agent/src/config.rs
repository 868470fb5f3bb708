//! Command-line and environment configuration. Every flag has a `BATON_*` environment twin, and
//! everything is validated at start-up so that bad input fails fast with one readable line that
//! names the flag.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

use regex::Regex;

use crate::alerts::{Filter as AlertFilter, PrometheusUrl};
use crate::drain::{Options as DrainOptions, TimeoutAction};
use crate::notify::{Endpoint, Kind, Template, Templates};
use crate::privilege::User;
use crate::window::{self, Window};

/// baton: drain, reboot and uncordon this node, one node at a time.
#[derive(Debug, Parser)]
#[command(name = "baton", version, about, long_about = None, args_override_self = true)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// baton's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent (the DaemonSet's entry point).
    #[command(args_override_self = true)]
    Agent(Box<AgentArgs>),
    /// Cordon and drain one node now, like `kubectl drain`, with baton's drain engine.
    #[command(args_override_self = true)]
    Drain(Box<DrainCommand>),
    /// Show baton's state across the cluster: slots, queue, drains, history, pause, agents
    /// (read-only).
    #[command(args_override_self = true)]
    Status(Box<StatusArgs>),
    /// Pause every node: create the pause ConfigMap (cycles under way finish).
    #[command(args_override_self = true)]
    Pause(PauseArgs),
    /// Lift the cluster-wide pause: delete the pause ConfigMap.
    #[command(args_override_self = true)]
    Resume(SwitchArgs),
    /// Request a reboot of NODE (the `baton.dev/reboot-requested` annotation).
    #[command(args_override_self = true)]
    Request(NodeReasonArgs),
    /// Withdraw the reboot request of NODE.
    #[command(args_override_self = true)]
    Cancel(NodeArgs),
    /// Pause NODE: no new cycle starts there (the `baton.dev/pause` annotation).
    #[command(args_override_self = true)]
    PauseNode(NodeReasonArgs),
    /// Lift the pause of NODE.
    #[command(args_override_self = true)]
    ResumeNode(NodeArgs),
}

/// How the host is rebooted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RebootMethod {
    /// Send `--reboot-signal` (39, systemd's SIGRTMIN+5 "reboot") to the host's PID 1.
    Signal,
    /// Run `--reboot-command` in the host's mount namespace (entered with setns).
    Command,
    /// Dry run: drain, log the reboot that would happen, uncordon.
    None,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The agent's flags. Names follow kured's where the meaning is the same.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// This node's name (the DaemonSet sets it from `spec.nodeName`).
    #[arg(long, env = "BATON_NODE_NAME", alias = "node-id", value_parser = parse_dns_subdomain)]
    pub node_name: String,

    /// How often the maintenance flag is checked (also checked at start).
    #[arg(long, env = "BATON_CHECK_INTERVAL", alias = "period", default_value = "30s",
          value_parser = duration_in(POSITIVE, MAX_CHECK_INTERVAL), allow_hyphen_values = true)]
    pub check_interval: Duration,

    /// File whose existence means "reboot required".
    #[arg(
        long,
        env = "BATON_REBOOT_SENTINEL",
        default_value = "/var/run/reboot-required"
    )]
    pub reboot_sentinel: PathBuf,

    /// Command that decides instead of the file: exit 0 = reboot required, 1 = not required,
    /// anything else = could not check (never a reboot). Runs in the host's mount namespace.
    #[arg(long, env = "BATON_REBOOT_SENTINEL_COMMAND", value_parser = parse_command)]
    pub reboot_sentinel_command: Option<CommandLine>,

    /// How long the sentinel command may run before it counts as "could not check".
    #[arg(long, env = "BATON_REBOOT_SENTINEL_TIMEOUT", default_value = "30s",
          value_parser = duration_in(POSITIVE, MAX_SENTINEL_TIMEOUT), allow_hyphen_values = true)]
    pub reboot_sentinel_timeout: Duration,

    /// Namespace of the Lease that serialises reboots.
    #[arg(long, env = "BATON_LOCK_NAMESPACE", default_value = "baton-system",
          value_parser = parse_dns_label)]
    pub lock_namespace: String,

    /// Name of the Lease that serialises reboots.
    #[arg(long, env = "BATON_LOCK_NAME", default_value = "baton", value_parser = parse_dns_subdomain)]
    pub lock_name: String,

    /// While a ConfigMap of this name exists in --lock-namespace, no node starts a cycle (its
    /// `reason` key says why): the cluster-wide pause.
    #[arg(long, env = "BATON_PAUSE_CONFIGMAP", default_value = "baton-pause",
          value_parser = parse_dns_subdomain)]
    pub pause_configmap: String,

    /// How long a holder that stopped renewing keeps the Lease before others may take it over.
    #[arg(long, env = "BATON_LOCK_TTL", default_value = "30m",
          value_parser = duration_in(MIN_LOCK_TTL, MAX_LOCK_TTL), allow_hyphen_values = true)]
    pub lock_ttl: Duration,

    /// How many nodes may be in a cycle at once (one Lease slot each: --lock-name, then
    /// --lock-name-1, ...).
    #[arg(long, env = "BATON_CONCURRENCY", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub concurrency: u16,

    /// Apply --concurrency per value of this node label (e.g. `topology.kubernetes.io/zone`):
    /// each zone reboots its own nodes, one (or N) at a time.
    #[arg(long, env = "BATON_GROUP_BY_LABEL", value_parser = parse_label_key,
          allow_hyphen_values = true)]
    pub group_by_label: Option<String>,

    /// Never two control-plane nodes (labelled `node-role.kubernetes.io/control-plane` or
    /// `.../master`) at once, whatever --concurrency and --group-by-label allow: they also hold
    /// the Lease `<lock-name>-control-plane`.
    #[arg(long, env = "BATON_SERIALIZE_CONTROL_PLANE", default_value_t = true, action = clap::ArgAction::Set)]
    pub serialize_control_plane: bool,

    /// Take over the Lease from a holder whose Node has been NotReady this long without
    /// renewing, unless it is rebooting (a deleted holder Node frees it at once).
    #[arg(long, env = "BATON_LOCK_HOLDER_NOT_READY_TIMEOUT", default_value = "15m",
          value_parser = duration_in(POSITIVE, MAX_LOCK_TTL), allow_hyphen_values = true)]
    pub lock_holder_not_ready_timeout: Duration,

    /// Give a cycle up when it cannot go on for this long: the flag cannot be checked or the
    /// boot ID read mid-cycle (baton aborts, uncordons and releases), or the agent cannot act at
    /// all (failing API calls, unreadable baton.dev/ annotations: it stops renewing its Lease so
    /// that others may go after --lock-ttl).
    #[arg(long, env = "BATON_STALL_TIMEOUT", default_value = "10m",
          value_parser = duration_in(POSITIVE, DAY), allow_hyphen_values = true)]
    pub stall_timeout: Duration,

    /// Before cordoning, wait (with the Lease released) while a PodDisruptionBudget covering a
    /// pod of this node allows no disruption; `false` starts the drain anyway.
    #[arg(long, env = "BATON_PDB_PREFLIGHT", default_value_t = true, action = clap::ArgAction::Set)]
    pub pdb_preflight: bool,

    /// No new cycle while a pod on this node matches this label selector (e.g. a running
    /// backup), checked before taking the Lease and again before cordoning.
    #[arg(long, env = "BATON_BLOCKING_POD_SELECTOR")]
    pub blocking_pod_selector: Option<String>,

    /// Prometheus to ask for active alerts (e.g. `http://prometheus.monitoring:9090`): while an
    /// alert passes the alert filters, no cycle starts. Unreachable counts as blocked.
    #[arg(long, env = "BATON_PROMETHEUS_URL", value_parser = PrometheusUrl::parse)]
    pub prometheus_url: Option<PrometheusUrl>,

    /// Alerts whose name matches this regex do not block (with --alert-filter-match-only: only
    /// they block).
    #[arg(long, env = "BATON_ALERT_FILTER_REGEXP", value_parser = parse_regex)]
    pub alert_filter_regexp: Option<Regex>,

    /// Turn --alert-filter-regexp into an include list: only matching alerts block.
    #[arg(long, env = "BATON_ALERT_FILTER_MATCH_ONLY")]
    pub alert_filter_match_only: bool,

    /// Only alerts whose name matches this regex block (--alert-filter-regexp still excludes).
    #[arg(long, env = "BATON_ALERT_INCLUDE_REGEXP", value_parser = parse_regex)]
    pub alert_include_regexp: Option<Regex>,

    /// Only firing alerts block; pending ones (their `for` not yet passed) do not.
    #[arg(long, env = "BATON_ALERT_FIRING_ONLY")]
    pub alert_firing_only: bool,

    /// After a reboot, keep the baton this long once the node is Ready and uncordoned, before
    /// the next node may start (kured's --lock-release-delay).
    #[arg(long, env = "BATON_SETTLE_TIME", alias = "lock-release-delay", default_value = "0s",
          value_parser = duration_in(Duration::ZERO, MAX_SETTLE_TIME), allow_hyphen_values = true)]
    pub settle_time: Duration,

    /// Before passing the baton on, also wait until every PodDisruptionBudget in the cluster has
    /// all its pods healthy again (DaemonSet pods on the node are always waited for).
    #[arg(long, env = "BATON_GATE_PDBS")]
    pub gate_pdbs: bool,

    /// Days on which a reboot may start (`su,mo,tu,we,th,fr,sa`, or full names).
    #[arg(long, env = "BATON_REBOOT_DAYS", default_value = "su,mo,tu,we,th,fr,sa",
          value_parser = parse_days)]
    pub reboot_days: Days,

    /// Time of day from which a reboot may start (`HH:MM[:SS]`, in --time-zone).
    #[arg(long, env = "BATON_START_TIME", default_value = "0:00", value_parser = window::parse_time)]
    pub start_time: jiff::civil::Time,

    /// Time of day until which a reboot may start; before --start-time, the window crosses
    /// midnight and belongs to the day it starts.
    #[arg(long, env = "BATON_END_TIME", default_value = "23:59:59", value_parser = window::parse_time)]
    pub end_time: jiff::civil::Time,

    /// Time zone of the window: an IANA name (`Europe/Berlin`), `UTC`, or `Local`.
    #[arg(long, env = "BATON_TIME_ZONE", default_value = "UTC", value_parser = window::parse_tz)]
    pub time_zone: jiff::tz::TimeZone,

    /// Dates on which no reboot starts (`YYYY-MM-DD,...`, in --time-zone).
    #[arg(long, env = "BATON_BLACKOUT_DATES", default_value = "", value_parser = parse_dates)]
    pub blackout_dates: Dates,

    /// How to drain.
    #[command(flatten)]
    pub drain: DrainArgs,

    /// Wait this long after cordoning before the drain starts (kured's --drain-delay waits
    /// before its cordon); the node takes no new pods meanwhile.
    #[arg(long, env = "BATON_DRAIN_DELAY", default_value = "0s",
          value_parser = duration_in(Duration::ZERO, MAX_DELAY), allow_hyphen_values = true)]
    pub drain_delay: Duration,

    /// Wait this long after the drain before the reboot (baton checks once more, after it,
    /// that the node is drained).
    #[arg(long, env = "BATON_REBOOT_DELAY", default_value = "0s",
          value_parser = duration_in(Duration::ZERO, MAX_DELAY), allow_hyphen_values = true)]
    pub reboot_delay: Duration,

    /// Labels (`key=value,...`) set on the node with the cordon, when its cycle starts. The
    /// admission policy must allow them (README, "Node labels").
    #[arg(long, env = "BATON_PRE_REBOOT_NODE_LABELS", action = ArgAction::Append,
          value_parser = parse_node_labels)]
    pub pre_reboot_node_labels: Vec<NodeLabels>,

    /// Labels (`key=value,...`) set on the node when its cycle ends: with the uncordon after
    /// the reboot, or when the cycle stops without one.
    #[arg(long, env = "BATON_POST_REBOOT_NODE_LABELS", action = ArgAction::Append,
          value_parser = parse_node_labels)]
    pub post_reboot_node_labels: Vec<NodeLabels>,

    /// kured's --annotate-nodes, accepted and ignored: baton always keeps its state in
    /// `baton.dev/` annotations on the Node.
    #[arg(long, env = "BATON_ANNOTATE_NODES", num_args = 0..=1, default_missing_value = "true",
          value_parser = clap::value_parser!(bool), value_name = "BOOL")]
    pub annotate_nodes: Option<bool>,

    /// Where to post notifications.
    #[command(flatten)]
    pub notify: NotifyArgs,

    /// How long to wait after a failed drain before trying again.
    #[arg(long, env = "BATON_DRAIN_FAILURE_BACKOFF", default_value = "5m",
          value_parser = duration_in(POSITIVE, MAX_BACKOFF), allow_hyphen_values = true)]
    pub drain_failure_backoff: Duration,

    /// Reboot even when the drain failed or timed out.
    #[arg(long, env = "BATON_FORCE_REBOOT", default_value_t = false)]
    pub force_reboot: bool,

    /// How to reboot the host.
    #[arg(
        long,
        env = "BATON_REBOOT_METHOD",
        value_enum,
        default_value = "command"
    )]
    pub reboot_method: RebootMethod,

    /// Command that reboots the host, run in the host's mount namespace.
    #[arg(long, env = "BATON_REBOOT_COMMAND", default_value = "/bin/systemctl reboot",
          value_parser = parse_command)]
    pub reboot_command: CommandLine,

    /// Signal sent to the host's PID 1 by the signal method (39 = SIGRTMIN+5: systemd reboots).
    #[arg(long, env = "BATON_REBOOT_SIGNAL", default_value_t = 39,
          value_parser = clap::value_parser!(i32).range(1..=64))]
    pub reboot_signal: i32,

    /// No reboot loops: how many reboot triggers may leave the boot ID unchanged, and how many
    /// completed reboots may leave the flag set, before baton stops and waits for a human.
    #[arg(long, env = "BATON_MAX_REBOOT_ATTEMPTS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_reboot_attempts: u32,

    /// Switch to this user (`UID` or `UID:GID`) right at start, keeping only the capabilities the
    /// reboot method needs (signal: CAP_KILL). The agent must start as root for that; the
    /// signal variant's manifests set 65532, so the agent cannot reach the host's root-owned
    /// sockets. Not with the command method, whose reboot command runs as root in the host.
    #[arg(long, env = "BATON_USER", value_parser = User::parse)]
    pub user: Option<User>,

    /// PID whose namespaces count as the host's: the target of the reboot signal and of setns.
    /// Only tests and unusual hosts change it.
    #[arg(long, env = "BATON_HOST_PID", default_value_t = 1,
          value_parser = clap::value_parser!(i32).range(1..))]
    pub host_pid: i32,

    /// File holding the current boot ID; a changed ID proves the reboot happened.
    #[arg(
        long,
        env = "BATON_BOOT_ID_FILE",
        default_value = "/proc/sys/kernel/random/boot_id"
    )]
    pub boot_id_file: PathBuf,

    /// Address of the /healthz, /readyz and /metrics server.
    #[arg(long, env = "BATON_METRICS_ADDRESS", default_value = "0.0.0.0:8080")]
    pub metrics_address: SocketAddr,

    /// Timeout of each Kubernetes API request (watches excepted).
    #[arg(long, env = "BATON_API_TIMEOUT", default_value = "30s",
          value_parser = duration_in(POSITIVE, MAX_API_TIMEOUT), allow_hyphen_values = true)]
    pub api_timeout: Duration,

    /// Log format.
    #[arg(long, env = "BATON_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Log filter, e.g. `info` or `baton=debug,kube=info`.
    #[arg(long, env = "BATON_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// Days of the week (a newtype, so clap takes the list as one value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Days(pub Vec<jiff::civil::Weekday>);

/// Dates (a newtype, so clap takes the list as one value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dates(pub Vec<jiff::civil::Date>);

fn parse_days(s: &str) -> Result<Days, String> {
    window::parse_days(s).map(Days)
}

fn parse_dates(s: &str) -> Result<Dates, String> {
    window::parse_dates(s).map(Dates)
}

/// Node labels (a newtype, so clap takes a list as one value).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NodeLabels(pub Vec<(String, String)>);

/// `key=value,...` (kured's form); an empty string is no labels.
fn parse_node_labels(s: &str) -> Result<NodeLabels, String> {
    let mut labels = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("{item:?} is not key=value"))?;
        let key = parse_label_key(key).map_err(|e| format!("{key:?}: {e}"))?;
        if key.starts_with("baton.dev/") {
            return Err(format!("{key:?}: baton.dev/ is baton's own prefix"));
        }
        if !label_value_ok(value) {
            return Err(format!(
                "{value:?} is not a label value: up to 63 letters, digits, '-', '_' or '.', starting and ending with a letter or digit"
            ));
        }
        labels.push((key, value.to_owned()));
    }
    Ok(NodeLabels(labels))
}

/// A label value: empty, or up to 63 letters, digits, `-`, `_` or `.`, with a letter or digit
/// at each end.
fn label_value_ok(v: &str) -> bool {
    let alnum = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    v.is_empty()
        || (v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && alnum(v.bytes().next())
            && alnum(v.bytes().last()))
}

/// A `--notify-url` as given: a secret, never shown (clap would repeat a refused value, so it
/// is checked later, by [`NotifyArgs::endpoints`], whose errors do not repeat it).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretUrl(…)")
    }
}

fn parse_secret_url(s: &str) -> Result<SecretUrl, String> {
    Ok(SecretUrl(s.to_owned()))
}

/// The default message of each notification (`{node}`, `{event}`, `{reason}`, `{message}`).
const TEMPLATE_STARTED: &str = "{node}: maintenance started ({message})";
const TEMPLATE_DRAINED: &str = "{node}: drained ({message})";
const TEMPLATE_REBOOTING: &str = "{node}: rebooting ({message})";
const TEMPLATE_COMPLETED: &str = "{node}: rebooted and back ({message})";
const TEMPLATE_FAILED: &str = "{node}: maintenance failed, {reason} ({message})";
const TEMPLATE_GAVE_UP: &str = "{node}: baton gave up, {reason} ({message})";
const TEMPLATE_CANCELLED: &str = "{node}: maintenance ended without a reboot, {reason} ({message})";

/// Notifications: where, and what they say.
#[derive(Debug, Clone, Args)]
pub struct NotifyArgs {
    /// Post each cycle event to this webhook: `https://...` (generic JSON; Slack's or Teams'
    /// shape for hooks.slack.com and *.webhook.office.com), `slack+https://...`,
    /// `teams+https://...`, `json+https://...`, or kured's `slack://...` / `teams://...`.
    /// Repeat the flag, or separate URLs with commas or spaces. A secret: never logged.
    #[arg(long, env = "BATON_NOTIFY_URL", action = ArgAction::Append, value_name = "URL",
          hide_env_values = true, value_parser = parse_secret_url)]
    pub notify_url: Vec<SecretUrl>,

    /// How long one attempt to post a notification may take, from connecting to the answer
    /// (then two more attempts, 1 s and 2 s apart).
    #[arg(long, env = "BATON_NOTIFY_TIMEOUT", default_value = "10s",
          value_parser = duration_in(POSITIVE, MAX_NOTIFY_TIMEOUT), allow_hyphen_values = true)]
    pub notify_timeout: Duration,

    /// Message when a cycle starts (cordoned, holding the baton); kured's
    /// --message-template-drain.
    #[arg(long, env = "BATON_MESSAGE_TEMPLATE_STARTED", alias = "message-template-drain",
          default_value = TEMPLATE_STARTED, value_parser = Template::parse)]
    pub message_template_started: Template,

    /// Message when the node is drained.
    #[arg(long, env = "BATON_MESSAGE_TEMPLATE_DRAINED", default_value = TEMPLATE_DRAINED,
          value_parser = Template::parse)]
    pub message_template_drained: Template,

    /// Message when the reboot is triggered; kured's --message-template-reboot.
    #[arg(long, env = "BATON_MESSAGE_TEMPLATE_REBOOTING", alias = "message-template-reboot",
          default_value = TEMPLATE_REBOOTING, value_parser = Template::parse)]
    pub message_template_rebooting: Template,

    /// Message when the node rebooted and is uncordoned; kured's --message-template-uncordon.
    #[arg(long, env = "BATON_MESSAGE_TEMPLATE_COMPLETED", alias = "message-template-uncordon",
          default_value = TEMPLATE_COMPLETED, value_parser = Template::parse)]
    pub message_template_completed: Template,

    /// Message when a cycle stops on a failure (drain failed, lease lost, stalled, ...).
    #[arg(long, env = "BATON_MESSAGE_TEMPLATE_FAILED", default_value = TEMPLATE_FAILED,
          value_parser = Template::parse)]
    pub message_template_failed: Template,

    /// Message when baton stops rebooting the node until a human looks.
    #[arg(long, env = "BATON_MESSAGE_TEMPLATE_GAVE_UP", default_value = TEMPLATE_GAVE_UP,
          value_parser = Template::parse)]
    pub message_template_gave_up: Template,

    /// Message when a cycle ends without a reboot by design (flag cleared, dry run).
    #[arg(long, env = "BATON_MESSAGE_TEMPLATE_CANCELLED", default_value = TEMPLATE_CANCELLED,
          value_parser = Template::parse)]
    pub message_template_cancelled: Template,
}

impl NotifyArgs {
    /// The webhooks, each value split at commas and white space. An error names the URL by
    /// its position only: a URL is a secret.
    pub fn endpoints(&self) -> Result<Vec<Endpoint>, String> {
        let urls = self
            .notify_url
            .iter()
            .flat_map(|u| u.0.split([',', ' ', '\t', '\n']))
            .filter(|u| !u.is_empty());
        urls.enumerate()
            .map(|(i, u)| {
                Endpoint::parse(u).map_err(|e| format!("--notify-url (URL {}): {e}", i + 1))
            })
            .collect()
    }

    /// What the notifier needs; an error is one line naming the flag (and no secret).
    pub fn settings(&self) -> Result<crate::notify::Settings, String> {
        Ok(crate::notify::Settings {
            endpoints: self.endpoints()?,
            templates: self.templates(),
            timeout: self.notify_timeout,
        })
    }

    /// The templates, by notification.
    pub fn templates(&self) -> Templates {
        Templates {
            by_kind: Kind::ALL.map(|k| {
                match k {
                    Kind::Started => &self.message_template_started,
                    Kind::Drained => &self.message_template_drained,
                    Kind::Rebooting => &self.message_template_rebooting,
                    Kind::Completed => &self.message_template_completed,
                    Kind::Failed => &self.message_template_failed,
                    Kind::GaveUp => &self.message_template_gave_up,
                    Kind::Cancelled => &self.message_template_cancelled,
                }
                .clone()
            }),
        }
    }
}

/// `baton drain NODE`.
#[derive(Debug, Clone, Args)]
pub struct DrainCommand {
    /// The node to cordon and drain.
    #[arg(value_parser = parse_dns_subdomain)]
    pub node: String,

    /// How to drain.
    #[command(flatten)]
    pub drain: DrainArgs,

    /// Timeout of each Kubernetes API request (watches excepted).
    #[arg(long, env = "BATON_API_TIMEOUT", default_value = "30s",
          value_parser = duration_in(POSITIVE, MAX_API_TIMEOUT), allow_hyphen_values = true)]
    pub api_timeout: Duration,
}

/// Where the operator's commands find baton, and how long each API request may take.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// baton's namespace: its Leases, its pause ConfigMap and its agents (the agents'
    /// --lock-namespace).
    #[arg(short = 'n', long, env = "BATON_LOCK_NAMESPACE", alias = "lock-namespace",
          default_value = "baton-system", value_parser = parse_dns_label)]
    pub namespace: String,

    /// Timeout of each Kubernetes API request (watches excepted).
    #[arg(long, env = "BATON_API_TIMEOUT", default_value = "30s",
          value_parser = duration_in(POSITIVE, MAX_API_TIMEOUT), allow_hyphen_values = true)]
    pub api_timeout: Duration,
}

/// The output format of `baton status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    Text,
    /// For scripts: the documented `baton.dev/status/v1` schema.
    Json,
}

/// When to colour text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Colour {
    /// On a terminal, unless `NO_COLOR` is set.
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// `baton status`.
#[derive(Debug, Clone, Args)]
pub struct StatusArgs {
    /// Where baton runs.
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// The agents' --lock-name: the Leases `<lock-name>`, `<lock-name>-1`, ... are the slots.
    #[arg(long, env = "BATON_LOCK_NAME", default_value = "baton", value_parser = parse_dns_subdomain)]
    pub lock_name: String,

    /// The agents' --pause-configmap.
    #[arg(long, env = "BATON_PAUSE_CONFIGMAP", default_value = "baton-pause",
          value_parser = parse_dns_subdomain)]
    pub pause_configmap: String,

    /// The agents' --max-reboot-attempts: a node whose flag survived this many reboots in a row
    /// has given up.
    #[arg(long, env = "BATON_MAX_REBOOT_ATTEMPTS", default_value_t = 3,
          value_parser = clap::value_parser!(u32).range(1..=100))]
    pub max_reboot_attempts: u32,

    /// Label selector of the agents' pods, in the namespace.
    #[arg(long, env = "BATON_AGENT_SELECTOR", default_value = "app.kubernetes.io/name=baton",
          value_parser = parse_selector)]
    pub agent_selector: String,

    /// Only Nodes matching this label selector (default: every Node).
    #[arg(short = 'l', long, env = "BATON_NODE_SELECTOR", value_parser = parse_selector)]
    pub selector: Option<String>,

    /// `text`, or `json` (one document; with --watch, one per line).
    #[arg(
        short = 'o',
        long,
        env = "BATON_OUTPUT",
        value_enum,
        default_value = "text"
    )]
    pub output: Output,

    /// Follow: print again whenever something changes (watches, no polling).
    #[arg(short = 'w', long, env = "BATON_WATCH")]
    pub watch: bool,

    /// Colour the text: `auto` (on a terminal, unless NO_COLOR is set), `always`, `never`.
    #[arg(long, env = "BATON_COLOR", value_enum, default_value = "auto")]
    pub color: Colour,
}

/// Where the pause ConfigMap is: `baton resume`, and part of `baton pause`.
#[derive(Debug, Clone, Args)]
pub struct SwitchArgs {
    /// Where baton runs.
    #[command(flatten)]
    pub cluster: ClusterArgs,

    /// The agents' --pause-configmap.
    #[arg(long, env = "BATON_PAUSE_CONFIGMAP", default_value = "baton-pause",
          value_parser = parse_dns_subdomain)]
    pub pause_configmap: String,
}

/// `baton pause`.
#[derive(Debug, Clone, Args)]
pub struct PauseArgs {
    /// The pause ConfigMap.
    #[command(flatten)]
    pub switch: SwitchArgs,

    /// Why (the ConfigMap's `reason`; agents repeat it in `baton.dev/waiting`).
    #[arg(long, env = "BATON_REASON")]
    pub reason: Option<String>,
}

/// A command on one node.
#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// The node.
    #[arg(value_parser = parse_dns_subdomain)]
    pub node: String,

    /// Timeout of each Kubernetes API request.
    #[arg(long, env = "BATON_API_TIMEOUT", default_value = "30s",
          value_parser = duration_in(POSITIVE, MAX_API_TIMEOUT), allow_hyphen_values = true)]
    pub api_timeout: Duration,
}

/// A command on one node, with a reason.
#[derive(Debug, Clone, Args)]
pub struct NodeReasonArgs {
    /// The node.
    #[command(flatten)]
    pub target: NodeArgs,

    /// Why (the annotation's value).
    #[arg(long, env = "BATON_REASON")]
    pub reason: Option<String>,
}

/// A label selector: not empty; the API server judges the rest (a refusal is bad input too).
fn parse_selector(s: &str) -> Result<String, String> {
    if s.trim().is_empty() {
        return Err("must not be empty (leave the flag unset to select everything)".to_owned());
    }
    Ok(s.to_owned())
}

/// The drain flags, shared by `baton agent` and `baton drain`. Names follow kubectl drain's
/// (with kured's `--drain-` prefix where kured has one).
#[derive(Debug, Clone, Args)]
pub struct DrainArgs {
    /// Give up draining after this long (see --drain-timeout-action).
    #[arg(long, env = "BATON_DRAIN_TIMEOUT", default_value = "10m",
          value_parser = duration_in(POSITIVE, MAX_DRAIN_TIMEOUT), allow_hyphen_values = true)]
    pub drain_timeout: Duration,

    /// At --drain-timeout: `abort` (uncordon, release, back off; PDBs are never bypassed) or
    /// `delete` (delete the pods left, bypassing their PDBs).
    #[arg(
        long,
        env = "BATON_DRAIN_TIMEOUT_ACTION",
        value_enum,
        default_value = "abort"
    )]
    pub drain_timeout_action: TimeoutAction,

    /// Leave DaemonSet-managed pods alone; `false` makes their presence refuse the drain.
    #[arg(long, env = "BATON_DRAIN_IGNORE_DAEMONSETS", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub drain_ignore_daemonsets: bool,

    /// Allow draining pods with emptyDir volumes (their data is lost).
    #[arg(long, env = "BATON_DELETE_EMPTYDIR_DATA")]
    pub delete_emptydir_data: bool,

    /// Allow draining pods no controller will recreate, and orphaned DaemonSet pods.
    #[arg(long, env = "BATON_DRAIN_FORCE", alias = "force")]
    pub drain_force: bool,

    /// Only drain pods matching this label selector.
    #[arg(long, env = "BATON_DRAIN_POD_SELECTOR")]
    pub drain_pod_selector: Option<String>,

    /// Grace period (seconds) given to drained pods; -1 keeps each pod's own.
    #[arg(long, env = "BATON_DRAIN_GRACE_PERIOD", default_value_t = -1, allow_hyphen_values = true,
          value_parser = clap::value_parser!(i64).range(-1..=i64::from(u32::MAX)))]
    pub drain_grace_period: i64,

    /// Do not wait for pods that have been terminating for longer than this (0s: always wait).
    #[arg(long, env = "BATON_SKIP_WAIT_FOR_DELETE_TIMEOUT", default_value = "0s",
          value_parser = duration_in(Duration::ZERO, MAX_SKIP_WAIT), allow_hyphen_values = true)]
    pub skip_wait_for_delete_timeout: Duration,

    /// Delete pods instead of evicting them: bypasses PodDisruptionBudgets.
    #[arg(long, env = "BATON_DISABLE_EVICTION")]
    pub disable_eviction: bool,

    /// Evictions in flight at once.
    #[arg(long, env = "BATON_DRAIN_PARALLELISM", default_value_t = 16,
          value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub drain_parallelism: u16,
}

impl DrainArgs {
    /// The drain engine's options.
    pub fn options(&self) -> DrainOptions {
        DrainOptions {
            ignore_daemonsets: self.drain_ignore_daemonsets,
            delete_emptydir_data: self.delete_emptydir_data,
            force: self.drain_force,
            pod_selector: self
                .drain_pod_selector
                .clone()
                .filter(|s| !s.trim().is_empty()),
            grace_period: u32::try_from(self.drain_grace_period).ok(),
            skip_wait_for_delete_timeout: Some(self.skip_wait_for_delete_timeout)
                .filter(|d| !d.is_zero()),
            disable_eviction: self.disable_eviction,
            timeout: self.drain_timeout,
            timeout_action: self.drain_timeout_action,
            parallelism: usize::from(self.drain_parallelism),
        }
    }
}

/// A day, a unit of the duration bounds below.
const DAY: Duration = Duration::from_secs(86_400);
/// `--lock-ttl` is at least this many `--api-timeout`s: the fence's renewal, the state write and
/// the trigger must all fit well within the TTL others judge the holder by.
const LOCK_TTL_PER_API_TIMEOUT: u32 = 3;
/// A (365-day) year, a unit of the duration bounds below.
const YEAR: Duration = Duration::from_secs(365 * 86_400);
/// The lower bound of a duration that must not be zero.
const POSITIVE: Duration = Duration::from_nanos(1);
/// The shortest `--lock-ttl`: renewals happen every third of it, and must fit API latency.
const MIN_LOCK_TTL: Duration = Duration::from_secs(6);
/// The longest `--lock-ttl` (and `--lock-holder-not-ready-timeout`): a holder silent for a year
/// is gone; anything longer only reads as "never", the stuck lock kured's users regret.
const MAX_LOCK_TTL: Duration = YEAR;
/// The longest `--drain-failure-backoff`: a year already means "until a human looks".
const MAX_BACKOFF: Duration = YEAR;
/// The longest `--check-interval`: checking less than daily leaves a wanted reboot waiting days.
const MAX_CHECK_INTERVAL: Duration = DAY;
/// The longest `--reboot-sentinel-timeout`: every check waits for it, and a check that takes an
/// hour is broken, not slow.
const MAX_SENTINEL_TIMEOUT: Duration = Duration::from_secs(3600);
/// The longest `--api-timeout`: no single request takes an hour; longer only hides a frozen API.
const MAX_API_TIMEOUT: Duration = Duration::from_secs(3600);
/// The longest `--settle-time`: it holds the whole rollout after every node; a day is plenty.
const MAX_SETTLE_TIME: Duration = DAY;
/// The longest `--drain-timeout`: a drain still blocked after a week needs a human, not time.
const MAX_DRAIN_TIMEOUT: Duration = Duration::from_secs(7 * 86_400);
/// The longest `--drain-delay` and `--reboot-delay`: the node holds the baton while it waits,
/// so the whole rollout waits too; longer is a pause, which has its own switch.
const MAX_DELAY: Duration = Duration::from_secs(3600);
/// The longest `--notify-timeout`: a webhook that takes longer is down.
const MAX_NOTIFY_TIMEOUT: Duration = Duration::from_secs(60);
/// The longest `--skip-wait-for-delete-timeout`: a pod terminating for a day is stuck.
const MAX_SKIP_WAIT: Duration = DAY;

/// A duration for people: the largest unit that divides it (`365d`, `1h`, `6s`, `500ms`).
fn show(d: Duration) -> String {
    let s = d.as_secs();
    if d.subsec_nanos() != 0 || s == 0 {
        return humantime::format_duration(d).to_string();
    }
    match s {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// The parser of a duration flag that accepts `min..=max`: bounded at parse time, so no later
/// `Instant + Duration` can overflow, and a typo fails at start with one line naming the flag.
fn duration_in(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let d = humantime::parse_duration(s.trim())
            .map_err(|_| "expected a duration such as 0s, 90s, 10m or 1h".to_owned())?;
        if d < min {
            return Err(if min == POSITIVE {
                "must be greater than zero".to_owned()
            } else {
                format!("must be at least {}", show(min))
            });
        }
        if d > max {
            return Err(format!("must be at most {}", show(max)));
        }
        Ok(d)
    }
}

/// A label key (`--group-by-label`): `[prefix/]name`, the prefix a DNS subdomain, the name up to
/// 63 letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit.
fn parse_label_key(s: &str) -> Result<String, String> {
    const WANT: &str = "must be a label key such as topology.kubernetes.io/zone: [prefix/]name, \
                        the name up to 63 letters, digits, '-', '_' or '.'";
    if s.trim().is_empty() {
        return Err("must not be empty (leave the flag unset to group nothing)".to_owned());
    }
    let (prefix, name) = match s.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let name_ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .last()
            .is_some_and(|b| b.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| parse_dns_subdomain(p).is_ok());
    if name_ok && prefix_ok {
        Ok(s.to_owned())
    } else {
        Err(WANT.to_owned())
    }
}

/// A command and its arguments, split like a shell would split them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine(pub Vec<String>);

impl std::ops::Deref for CommandLine {
    type Target = [String];
    fn deref(&self) -> &[String] {
        &self.0
    }
}

fn parse_command(s: &str) -> Result<CommandLine, String> {
    let words = split_words(s)?;
    if words.is_empty() {
        return Err("must name a command".to_owned());
    }
    Ok(CommandLine(words))
}

/// Splits a command line into words, honouring single and double quotes and backslashes (like a
/// POSIX shell, without expansions).
pub fn split_words(s: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => word.push(c),
                        None => return Err("unterminated single quote".to_owned()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c) => word.push(c),
                            None => return Err("unterminated double quote".to_owned()),
                        },
                        Some(c) => word.push(c),
                        None => return Err("unterminated double quote".to_owned()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(c) => word.push(c),
                    None => return Err("trailing backslash".to_owned()),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    Ok(words)
}

fn parse_regex(s: &str) -> Result<Regex, String> {
    // The first line of regex's message names the problem; the rest is an ASCII-art caret.
    Regex::new(s).map_err(|e| match e {
        regex::Error::Syntax(msg) => format!(
            "not a valid regex: {}",
            msg.lines()
                .rev()
                .find_map(|l| l.strip_prefix("error: "))
                .unwrap_or("syntax error")
        ),
        other => format!("not a valid regex: {other}"),
    })
}

fn parse_dns_label(s: &str) -> Result<String, String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(s.to_owned())
    } else {
        Err("must be a DNS label: up to 63 lowercase letters, digits or '-'".to_owned())
    }
}

fn parse_dns_subdomain(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if s.len() > 253 || s.split('.').any(|l| parse_dns_label(l).is_err()) {
        return Err(
            "must be a DNS subdomain: lowercase letters, digits, '-' and '.', up to 253".to_owned(),
        );
    }
    Ok(s.to_owned())
}

impl AgentArgs {
    /// Rules between flags that clap cannot express for values that may come from the
    /// environment (a chart sets every switch, off or on). One line naming the flags.
    pub fn check(&self) -> Result<(), String> {
        let needs_url = [
            ("--alert-filter-regexp", self.alert_filter_regexp.is_some()),
            ("--alert-filter-match-only", self.alert_filter_match_only),
            (
                "--alert-include-regexp",
                self.alert_include_regexp.is_some(),
            ),
            ("--alert-firing-only", self.alert_firing_only),
        ];
        if self.prometheus_url.is_none()
            && let Some((flag, _)) = needs_url.iter().find(|(_, set)| *set)
        {
            return Err(format!("{flag} needs --prometheus-url"));
        }
        // Between the fencing renewal and the trigger sit two API calls: the proof must outlive
        // them with room to spare.
        if self.lock_ttl < self.api_timeout.saturating_mul(LOCK_TTL_PER_API_TIMEOUT) {
            return Err(format!(
                "--lock-ttl ({}) must be at least {LOCK_TTL_PER_API_TIMEOUT} times --api-timeout ({})",
                humantime::format_duration(self.lock_ttl),
                humantime::format_duration(self.api_timeout)
            ));
        }
        if self.user.is_some() && self.reboot_method == RebootMethod::Command {
            return Err(
                "--user cannot be used with --reboot-method=command: the reboot command runs as root in the host"
                    .to_owned(),
            );
        }
        if self.alert_filter_match_only && self.alert_filter_regexp.is_none() {
            return Err("--alert-filter-match-only needs --alert-filter-regexp".to_owned());
        }
        if self.start_time == self.end_time {
            // kured opens such a window for one second a day; nobody means that.
            return Err(format!(
                "--start-time and --end-time are both {}: the window would be open one second a \
                 day (for any time of day, leave both unset: 0:00 to 23:59:59)",
                self.start_time
            ));
        }
        self.notify.endpoints()?;
        if self.alert_filter_match_only && self.alert_include_regexp.is_some() {
            return Err(
                "--alert-filter-match-only and --alert-include-regexp cannot be used together"
                    .to_owned(),
            );
        }
        Ok(())
    }

    /// Which Prometheus alerts block, from the alert flags.
    pub fn alert_filter(&self) -> AlertFilter {
        let (include, exclude) = if self.alert_filter_match_only {
            (self.alert_filter_regexp.clone(), None)
        } else {
            (
                self.alert_include_regexp.clone(),
                self.alert_filter_regexp.clone(),
            )
        };
        AlertFilter {
            include,
            exclude,
            firing_only: self.alert_firing_only,
        }
    }

    /// The reboot window.
    pub fn window(&self) -> Window {
        Window::new(
            &self.reboot_days.0,
            self.start_time,
            self.end_time,
            self.time_zone.clone(),
            &self.blackout_dates.0,
        )
    }

    /// The labels set when a cycle starts (`pre`) or ends; a key given twice takes its last
    /// value.
    pub fn node_labels(&self, pre: bool) -> std::collections::BTreeMap<String, String> {
        let given = if pre {
            &self.pre_reboot_node_labels
        } else {
            &self.post_reboot_node_labels
        };
        given.iter().flat_map(|l| l.0.iter().cloned()).collect()
    }

    /// How often the holder renews the Lease ([`crate::lease::renew_interval`]).
    pub fn lock_renew_interval(&self) -> Duration {
        crate::lease::renew_interval(self.lock_ttl)
    }
}

/// Turns a clap error into one line that names the flag and the problem.
pub fn one_line_error(err: &clap::Error) -> String {
    let text = err.to_string();
    let kept: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
        .collect();
    let line = kept.join(" ");
    let line = line.strip_prefix("error: ").unwrap_or(&line);
    format!("baton: error: {line}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<AgentArgs, String> {
        let mut all = vec!["baton", "agent"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all) {
            Ok(Cli {
                command: Command::Agent(a),
            }) => Ok(*a),
            Ok(other) => Err(format!("unexpected {other:?}")),
            Err(e) => Err(one_line_error(&e)),
        }
    }

    #[test]
    fn defaults_match_the_documentation() {
        let a = parse(&["--node-name", "n1"]).unwrap();
        assert_eq!(a.check_interval, Duration::from_secs(30));
        assert_eq!(a.lock_ttl, Duration::from_secs(30 * 60));
        assert_eq!(a.drain.drain_timeout, Duration::from_secs(600));
        let d = a.drain.options();
        assert!(d.ignore_daemonsets && !d.delete_emptydir_data && !d.force && !d.disable_eviction);
        assert_eq!(d.grace_period, None);
        assert_eq!(d.skip_wait_for_delete_timeout, None);
        assert_eq!(d.timeout_action, TimeoutAction::Abort);
        assert_eq!(a.reboot_method, RebootMethod::Command);
        assert_eq!(*a.reboot_command, ["/bin/systemctl", "reboot"]);
        assert_eq!(a.reboot_signal, 39);
        assert_eq!(a.reboot_sentinel, PathBuf::from("/var/run/reboot-required"));
        assert_eq!(a.lock_renew_interval(), Duration::from_secs(60));
    }

    #[test]
    fn bad_values_give_one_line_naming_the_flag() {
        let refused = |args: &[&str], flag: &str| {
            let err = parse(args).unwrap_err();
            assert!(!err.contains('\n'), "{err}");
            assert!(err.contains(flag), "{err} should name {flag}");
            assert!(err.starts_with("baton: error: "), "{err}");
        };
        refused(&[], "--node-name");
        refused(&["--node-name", "Not_A_Node"], "--node-name");
        for (flag, value) in [
            ("--reboot-method", "kexec"),
            ("--lock-ttl", "-5m"),
            ("--lock-ttl", "2s"),
            ("--drain-timeout", "0s"),
            ("--reboot-signal", "99"),
            ("--reboot-command", "'unterminated"),
            // Just past a duration's bounds (the bounds themselves pass: see below).
            ("--lock-ttl", "366d"),
            ("--check-interval", "25h"),
            ("--check-interval", "0s"),
            ("--api-timeout", "61m"),
            ("--reboot-days", "someday"),
            ("--start-time", "25:00"),
            ("--time-zone", "Nowhere/Land"),
            ("--blackout-dates", "24.12.2026"),
        ] {
            refused(&["--node-name", "n1", flag, value], flag);
        }
    }

    /// Parses any subcommand's arguments (after `baton`).
    fn parse_cli(args: &[&str]) -> Result<Cli, String> {
        let mut all = vec!["baton"];
        all.extend_from_slice(args);
        Cli::try_parse_from(all).map_err(|e| one_line_error(&e))
    }

    #[test]
    fn every_duration_flag_is_bounded_at_parse_time() {
        use clap::CommandFactory;
        // A flag whose default is a duration is a duration flag: new ones are covered too.
        let cli = Cli::command();
        let mut checked = Vec::new();
        for (sub, base) in [
            ("agent", &["agent", "--node-name", "n1"][..]),
            ("drain", &["drain", "n1", "--drain-force"]),
            ("status", &["status"]),
            ("pause", &["pause"]),
            ("resume", &["resume"]),
            ("request", &["request", "n1"]),
            ("cancel", &["cancel", "n1"]),
            ("pause-node", &["pause-node", "n1"]),
            ("resume-node", &["resume-node", "n1"]),
        ] {
            let cmd = cli.find_subcommand(sub).unwrap();
            for arg in cmd.get_arguments() {
                let (Some(long), Some(default)) =
                    (arg.get_long(), arg.get_default_values().first())
                else {
                    continue;
                };
                if humantime::parse_duration(default.to_str().unwrap()).is_err() {
                    continue;
                }
                let huge = format!("--{long}=500000000000y");
                let err = parse_cli(&[base, &[huge.as_str()]].concat()).unwrap_err();
                assert!(!err.contains('\n'), "{err}");
                assert!(
                    err.contains(&format!("--{long}")),
                    "{err} should name --{long}"
                );
                assert!(err.contains("at most"), "{err} should give the bound");
                checked.push(format!("{sub} --{long}"));
            }
        }
        for flag in [
            "agent --check-interval",
            "agent --reboot-sentinel-timeout",
            "agent --lock-ttl",
            "agent --lock-holder-not-ready-timeout",
            "agent --settle-time",
            "agent --drain-timeout",
            "agent --skip-wait-for-delete-timeout",
            "agent --drain-failure-backoff",
            "agent --api-timeout",
            "agent --drain-delay",
            "agent --reboot-delay",
            "agent --notify-timeout",
            "drain --drain-timeout",
            "drain --skip-wait-for-delete-timeout",
            "drain --api-timeout",
            "status --api-timeout",
            "pause --api-timeout",
            "resume --api-timeout",
            "request --api-timeout",
            "cancel --api-timeout",
            "pause-node --api-timeout",
            "resume-node --api-timeout",
        ] {
            assert!(
                checked.iter().any(|c| c == flag),
                "{flag} not checked: {checked:?}"
            );
        }
    }

    #[test]
    fn duration_bounds_are_inclusive() {
        let a = parse(&[
            "--node-name",
            "n1",
            "--lock-ttl=365d",
            "--drain-failure-backoff=365d",
            "--check-interval=1d",
            "--api-timeout=1h",
            "--settle-time=0s",
        ])
        .unwrap();
        assert_eq!(a.lock_ttl, Duration::from_secs(365 * 86_400));
        // The largest values leave the agent's own arithmetic room.
        let now = std::time::SystemTime::now();
        assert!(now.checked_add(a.drain_failure_backoff).is_some());
    }

    #[test]
    fn group_by_label_must_be_a_label_key() {
        let a = parse(&[
            "--node-name",
            "n1",
            "--group-by-label",
            "topology.kubernetes.io/zone",
        ])
        .unwrap();
        assert_eq!(
            a.group_by_label.as_deref(),
            Some("topology.kubernetes.io/zone")
        );
        assert!(parse(&["--node-name", "n1", "--group-by-label", "rack"]).is_ok());
        for bad in [
            "",
            " ",
            "-zone",
            "a/b/c",
            "Not_A.Domain/zone",
            "/zone",
            "zone/",
            &"z".repeat(64),
        ] {
            let err = parse(&["--node-name", "n1", "--group-by-label", bad]).unwrap_err();
            assert!(
                err.contains("--group-by-label") && !err.contains('\n'),
                "{bad:?}: {err}"
            );
        }
    }

    #[test]
    fn the_lock_ttl_must_outlive_the_api_calls_between_the_fence_and_the_trigger() {
        let check = |ttl: &str, timeout: &str| {
            parse(&[
                "--node-name",
                "n1",
                "--lock-ttl",
                ttl,
                "--api-timeout",
                timeout,
            ])
            .unwrap()
            .check()
        };
        let err = check("30s", "30s").unwrap_err();
        assert!(
            err.contains("--lock-ttl") && err.contains("--api-timeout") && !err.contains('\n'),
            "{err}"
        );
        assert!(check("90s", "30s").is_ok());
        assert!(check("89s", "30s").is_err());
        // The defaults (30m, 30s) are far apart.
        assert!(parse(&["--node-name", "n1"]).unwrap().check().is_ok());
    }

    #[test]
    fn an_empty_reboot_window_is_refused_at_start() {
        let window = |start: &str, end: &str| {
            let args = [
                "--node-name",
                "n1",
                "--start-time",
                start,
                "--end-time",
                end,
            ];
            parse(&args).unwrap().check()
        };
        let err = window("03:00", "3:00:00").unwrap_err();
        assert!(
            err.contains("--start-time") && err.contains("--end-time") && !err.contains('\n'),
            "{err}"
        );
        assert!(window("03:00", "03:01").is_ok());
        assert!(window("23:00", "03:00").is_ok());
    }

    #[test]
    fn alert_flags_follow_kured_and_are_checked_together() {
        let url = ["--node-name", "n1", "--prometheus-url", "http://prom:9090"];
        let with = |extra: &[&str]| {
            let mut all = url.to_vec();
            all.extend_from_slice(extra);
            parse(&all).unwrap()
        };
        // kured: --alert-filter-regexp excludes; --alert-filter-match-only turns it into an
        // include list.
        let f = with(&["--alert-filter-regexp", "^Watchdog$"]).alert_filter();
        assert!(f.include.is_none() && f.exclude.is_some() && !f.firing_only);
        let a = with(&[
            "--alert-filter-regexp",
            "^Node",
            "--alert-filter-match-only",
            "--alert-firing-only",
        ]);
        assert!(a.check().is_ok());
        let f = a.alert_filter();
        assert!(f.include.is_some() && f.exclude.is_none() && f.firing_only);
        let f = with(&[
            "--alert-include-regexp",
            "^Kube",
            "--alert-filter-regexp",
            "Info",
        ])
        .alert_filter();
        assert!(f.include.is_some() && f.exclude.is_some());

        let err = parse(&["--node-name", "n1", "--prometheus-url", "prom:9090"]).unwrap_err();
        assert!(
            err.contains("--prometheus-url") && !err.contains('\n'),
            "{err}"
        );
        let err = parse(&[&url[..], &["--alert-filter-regexp", "(unclosed"]].concat()).unwrap_err();
        assert!(
            err.contains("--alert-filter-regexp") && !err.contains('\n'),
            "{err}"
        );

        for (args, names) in [
            (
                vec!["--node-name", "n1", "--alert-firing-only"],
                "--alert-firing-only needs --prometheus-url",
            ),
            (
                vec!["--node-name", "n1", "--alert-filter-regexp", "x"],
                "--alert-filter-regexp needs --prometheus-url",
            ),
            (
                [&url[..], &["--alert-filter-match-only"]].concat(),
                "--alert-filter-match-only needs --alert-filter-regexp",
            ),
            (
                [
                    &url[..],
                    &[
                        "--alert-filter-regexp",
                        "x",
                        "--alert-filter-match-only",
                        "--alert-include-regexp",
                        "y",
                    ],
                ]
                .concat(),
                "cannot be used together",
            ),
        ] {
            let err = parse(&args).unwrap().check().unwrap_err();
            assert!(err.contains(names), "{err}");
        }
    }

    #[test]
    fn the_readme_documents_every_agent_flag_with_its_env_and_default() {
        use clap::CommandFactory;
        let readme = include_str!("../../README.md");
        let cli = Cli::command();
        let agent = cli.find_subcommand("agent").unwrap();
        for arg in agent.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if ["help", "version"].contains(&long) {
                continue;
            }
            let row = readme
                .lines()
                .find(|l| l.starts_with(&format!("| `--{long}`")));
            assert!(row.is_some(), "no README flags row for --{long}");
            let row = row.unwrap();
            let env = arg.get_env().unwrap().to_str().unwrap();
            assert!(row.contains(&format!("`{env}`")), "{row}: no {env}");
            let default = match arg.get_default_values().first() {
                Some(d) => d.to_str().unwrap().to_owned(),
                None if matches!(arg.get_action(), clap::ArgAction::SetTrue) => "false".into(),
                None => continue,
            };
            if default.is_empty() {
                continue;
            }
            assert!(
                row.contains(&format!("`{default}`")),
                "{row}: default {default:?} missing"
            );
        }
    }

    #[test]
    fn the_operator_commands_share_the_agents_names_and_defaults() {
        let status = |args: &[&str]| match parse_cli(args).unwrap().command {
            Command::Status(s) => Some(*s),
            _ => None,
        };
        let s = status(&["status"]).unwrap();
        assert_eq!(
            (
                s.cluster.namespace.as_str(),
                s.lock_name.as_str(),
                s.pause_configmap.as_str()
            ),
            ("baton-system", "baton", "baton-pause")
        );
        assert_eq!(
            (s.output, s.watch, s.color),
            (Output::Text, false, Colour::Auto)
        );
        assert_eq!(s.max_reboot_attempts, 3);
        let s = status(&["status", "-n", "ops", "-o", "json", "-w", "-l", "pool=a"]).unwrap();
        assert_eq!(
            (s.cluster.namespace.as_str(), s.output, s.watch),
            ("ops", Output::Json, true)
        );
        assert_eq!(s.selector.as_deref(), Some("pool=a"));
        // kubectl's -n, and the agent's own name for the namespace.
        let p = match parse_cli(&["pause", "--lock-namespace", "ops", "--reason", "freeze"])
            .unwrap()
            .command
        {
            Command::Pause(p) => Some(p),
            _ => None,
        }
        .unwrap();
        assert_eq!(
            (p.switch.cluster.namespace.as_str(), p.reason.as_deref()),
            ("ops", Some("freeze"))
        );
        for (args, flag) in [
            (&["request"][..], "<NODE>"),
            (&["request", "Bad_Node"], "<NODE>"),
            (&["status", "-l", " "], "--selector"),
            (&["status", "--agent-selector", ""], "--agent-selector"),
            (&["status", "-o", "yaml"], "--output"),
            (&["resume", "-n", "Bad"], "--namespace"),
        ] {
            let err = parse_cli(args).unwrap_err();
            assert!(err.contains(flag) && !err.contains('\n'), "{args:?}: {err}");
        }
    }

    #[test]
    fn the_readme_documents_every_operator_flag_with_its_env_and_default() {
        use clap::CommandFactory;
        let readme = include_str!("../../README.md");
        let cli = Cli::command();
        for sub in [
            "status",
            "pause",
            "resume",
            "request",
            "cancel",
            "pause-node",
            "resume-node",
        ] {
            for arg in cli.find_subcommand(sub).unwrap().get_arguments() {
                let Some(long) = arg.get_long() else { continue };
                if ["help", "version"].contains(&long) {
                    continue;
                }
                let env = arg.get_env().unwrap().to_str().unwrap();
                let row = readme.lines().find(|l| {
                    l.starts_with("| ")
                        && l.contains(&format!("`--{long}`"))
                        && l.contains(&format!("`{env}`"))
                        && (l.contains(&format!("`{sub}`")) || l.contains("| all"))
                });
                assert!(row.is_some(), "no README row for {sub} --{long} ({env})");
                if let Some(default) = arg.get_default_values().first() {
                    let default = default.to_str().unwrap();
                    assert!(
                        row.unwrap().contains(&format!("`{default}`")),
                        "{sub} --{long}: default {default:?} missing"
                    );
                }
            }
        }
    }

    #[test]
    fn a_repeated_flag_takes_the_last_value_like_go_flags_do() {
        let a = parse(&[
            "--node-name",
            "n1",
            "--drain-timeout=1m",
            "--drain-timeout=2m",
        ])
        .unwrap();
        assert_eq!(a.drain.drain_timeout, Duration::from_secs(120));
    }

    #[test]
    fn drain_flags_follow_kubectl() {
        let a = parse(&[
            "--node-name",
            "n1",
            "--drain-grace-period",
            "0",
            "--force",
            "--delete-emptydir-data",
            "--drain-ignore-daemonsets=false",
            "--skip-wait-for-delete-timeout",
            "90s",
            "--drain-timeout-action",
            "delete",
        ])
        .unwrap();
        let d = a.drain.options();
        assert_eq!(d.grace_period, Some(0));
        assert!(d.force && d.delete_emptydir_data && !d.ignore_daemonsets);
        assert_eq!(
            d.skip_wait_for_delete_timeout,
            Some(Duration::from_secs(90))
        );
        assert_eq!(d.timeout_action, TimeoutAction::Delete);
        let err = parse(&["--node-name", "n1", "--drain-grace-period", "-2"]).unwrap_err();
        assert!(err.contains("--drain-grace-period"), "{err}");
    }

    #[test]
    fn window_flags_parse() {
        let a = parse(&[
            "--node-name",
            "n1",
            "--reboot-days",
            "sat,sun",
            "--start-time",
            "22:00",
            "--end-time",
            "02:00",
            "--time-zone",
            "Europe/Berlin",
            "--blackout-dates",
            "2026-12-24",
        ])
        .unwrap();
        assert_eq!(a.reboot_days.0.len(), 2);
        assert_eq!(a.blackout_dates.0.len(), 1);
    }

    #[test]
    fn notify_urls_repeat_split_and_never_show_in_an_error() {
        let a = parse(&[
            "--node-name",
            "n1",
            "--notify-url",
            "https://hooks.slack.com/services/T1/B2/X3",
            "--notify-url",
            "teams+https://t.example.com/a, json+http://127.0.0.1:9/b http://h/c",
        ])
        .unwrap();
        let formats: Vec<_> = a
            .notify
            .endpoints()
            .unwrap()
            .iter()
            .map(|e| e.format.as_str())
            .collect();
        assert_eq!(formats, ["slack", "teams", "json", "json"]);
        assert!(a.check().is_ok());
        assert!(
            !format!("{a:?}").contains("hooks.slack.com"),
            "Debug shows no URL"
        );
        let bad = parse(&[
            "--node-name",
            "n1",
            "--notify-url",
            "https://ok.example.com/x,ftp://host/SECRET",
        ])
        .unwrap();
        let err = bad.check().unwrap_err();
        assert!(
            err.starts_with("--notify-url (URL 2): unsupported scheme"),
            "{err}"
        );
        assert!(!err.contains("SECRET") && !err.contains('\n'), "{err}");
        assert!(
            parse(&["--node-name", "n1"])
                .unwrap()
                .notify
                .endpoints()
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn message_templates_take_kured_names_and_refuse_unknown_placeholders() {
        use crate::notify::{Kind, Notice};
        let a = parse(&[
            "--node-name",
            "n1",
            "--message-template-drain",
            "Draining node %s",
            "--message-template-reboot=Rebooting node %s",
            "--message-template-uncordon",
            "Node %s rebooted & uncordoned successfully!",
            "--message-template-failed",
            "{node} {event}: {reason}",
        ])
        .unwrap();
        let t = a.notify.templates();
        let said = |kind: Kind| {
            t.of(kind).render(&Notice {
                node: "n1".into(),
                kind,
                reason: "DrainFailed".into(),
                message: String::new(),
                warning: false,
                time: std::time::SystemTime::UNIX_EPOCH,
            })
        };
        assert_eq!(said(Kind::Started), "Draining node n1");
        assert_eq!(said(Kind::Rebooting), "Rebooting node n1");
        assert_eq!(
            said(Kind::Completed),
            "Node n1 rebooted & uncordoned successfully!"
        );
        assert_eq!(said(Kind::Failed), "n1 failed: DrainFailed");
        assert_eq!(said(Kind::Drained), "n1: drained ()");
        let err =
            parse(&["--node-name", "n1", "--message-template-gave-up", "{host}"]).unwrap_err();
        assert!(
            err.contains("--message-template-gave-up")
                && err.contains("{host}")
                && !err.contains('\n'),
            "{err}"
        );
    }

    #[test]
    fn node_labels_follow_kured_and_are_checked() {
        let a = parse(&[
            "--node-name",
            "n1",
            "--pre-reboot-node-labels",
            "example.com/maintenance=true,phase=",
            "--pre-reboot-node-labels=rack=r1",
            "--post-reboot-node-labels",
            "example.com/maintenance=false",
        ])
        .unwrap();
        let pre = a.node_labels(true);
        assert_eq!(pre.len(), 3);
        assert_eq!(pre["example.com/maintenance"], "true");
        assert_eq!(pre["phase"], "");
        assert_eq!(a.node_labels(false)["example.com/maintenance"], "false");
        assert!(
            parse(&["--node-name", "n1", "--post-reboot-node-labels", ""])
                .unwrap()
                .node_labels(false)
                .is_empty()
        );
        for bad in [
            "novalue",
            "Bad_Key!=x",
            "k=-bad-",
            "baton.dev/phase=x",
            &format!("k={}", "v".repeat(64)),
        ] {
            let err = parse(&["--node-name", "n1", "--pre-reboot-node-labels", bad]).unwrap_err();
            assert!(
                err.contains("--pre-reboot-node-labels") && !err.contains('\n'),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn kured_annotate_nodes_and_delays_are_accepted() {
        for flag in [
            "--annotate-nodes",
            "--annotate-nodes=true",
            "--annotate-nodes=false",
        ] {
            assert!(
                parse(&["--node-name", "n1", flag])
                    .unwrap()
                    .annotate_nodes
                    .is_some(),
                "{flag}"
            );
        }
        assert_eq!(parse(&["--node-name", "n1"]).unwrap().annotate_nodes, None);
        let a = parse(&[
            "--node-name",
            "n1",
            "--drain-delay=30s",
            "--reboot-delay",
            "1m",
        ])
        .unwrap();
        assert_eq!(
            (a.drain_delay, a.reboot_delay),
            (Duration::from_secs(30), Duration::from_secs(60))
        );
    }

    #[test]
    fn kured_names_are_accepted() {
        let a = parse(&["--node-id", "n1", "--period", "1m"]).unwrap();
        assert_eq!(a.node_name, "n1");
        assert_eq!(a.check_interval, Duration::from_secs(60));
    }

    #[test]
    fn words_split_like_a_shell() {
        assert_eq!(split_words("a b  c").unwrap(), ["a", "b", "c"]);
        assert_eq!(
            split_words(r#"sh -c 'echo "x y"'"#).unwrap(),
            ["sh", "-c", r#"echo "x y""#]
        );
        assert_eq!(split_words(r#"a\ b "c\"d""#).unwrap(), ["a b", "c\"d"]);
        assert_eq!(split_words("''").unwrap(), [""]);
        assert!(split_words("'x").is_err());
        assert!(split_words("x\\").is_err());
    }
}
