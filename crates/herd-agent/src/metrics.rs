//! Prometheus metrics: what the agent counts, and the small HTTP server that
//! `herd agent --metrics ADDR:PORT` starts to expose them at `/metrics`.
//!
//! [`Metrics`] holds one registry (prometheus-client) and every metric in it. The agent
//! creates it in [`crate::agent::run_agent`] and shares it through an [`Arc`]: the
//! workstation's task drivers count attempts through an [`Attempt`] guard, the file
//! service counts questions and bytes, the helper counts the tasks it hosts, and the
//! main loop sets the gauges from each load report it builds (every second or so, and
//! whenever a task starts or ends here). Without `--metrics` everything is still
//! counted, but nothing is served.
//!
//! # The metrics
//!
//! Every name starts with `herd_`. "Attempt" is one run of a task on one node: a task
//! lost or evicted and run again elsewhere makes several attempts.
//!
//! On the workstation (tasks its users submitted; `node` is the node an attempt ran on,
//! the workstation itself included):
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `herd_tasks_started_total{node}` | counter | attempts started on `node` (sent to a helper, or run here by `herd run` itself) |
//! | `herd_tasks_finished_total{node}` | counter | attempts that ran to the command's exit status, whatever it was (a non-zero exit counts here: the command ran, and its exit code is the user's business), with every change committed |
//! | `herd_tasks_failed_total{node}` | counter | attempts that ended on herd's side without a committed exit status of the command and will not run again: the helper could not run it (no sandbox, disk full), the commit failed, `herd run` went away, `herd kill`, or it was lost with no retry left |
//! | `herd_tasks_retried_total{node}` | counter | attempts lost (node dead or left, stream broken) or evicted and handed back to the queue to run again elsewhere |
//! | `herd_tasks_evicted_total{node}` | counter | attempts the helper evicted (its owner needed it, or memory ran short); each is also counted as retried or failed |
//! | `herd_tasks_unplaceable_total` | counter | tasks that failed in the queue because no node could ever run them: none alive with the exec role and cores, or every one avoided after losing the task (then its last attempt counts as retried) |
//! | `herd_tasks_running` | gauge | attempts running now |
//! | `herd_queue_length` | gauge | tasks waiting for a slot |
//! | `herd_task_duration_seconds` | histogram | from a task's submission to its end (queueing and re-runs included), observed when its last attempt finished or failed (not for a task that never started, nor one that became unplaceable after a retry); buckets 10 ms to 1 h |
//! | `herd_fs_requests_total{op}` | counter | file questions from helpers, by `op` (`stat`, `list`, `read`, `readlink`, `prefetch`, `validate`), refused ones included |
//! | `herd_fs_bytes_served_total` | counter | bytes of file contents sent to helpers (`read` answers and prefetched files) |
//!
//! Summed over attempts, `started = finished + failed + retried + running` per node.
//!
//! On the helper (tasks it runs for workstations) and about the node:
//!
//! | name | type | meaning |
//! |---|---|---|
//! | `herd_hosted_tasks_total` | counter | tasks whose sandbox started here |
//! | `herd_hosted_tasks_running` | gauge | tasks running here now |
//! | `herd_hosted_tasks_evicted_total` | counter | tasks this node evicted |
//! | `herd_cache_hits_total` | counter | file contents served from this node's cache |
//! | `herd_cache_misses_total` | counter | file contents fetched from a workstation into the cache |
//! | `herd_owner_load` | gauge | cores the host's owner uses (herd's own use excluded) |
//! | `herd_helper_mode{mode}` | gauge | 1 for the polite policy's current mode (`waiting`, `running`, `suspended`), 0 for the others |
//! | `herd_helper_accepting` | gauge | 1 when the polite policy and `herd drain` let this node take new work (owner idle long enough, memory enough, not drained); its exec role and `--cpus` are not considered |
//! | `herd_members{state}` | gauge | nodes this agent sees in each state (`alive`, `suspect`, `dead`, `left`), itself included |
//! | `herd_build_info{version}` | gauge | always 1; the label says which herd runs |
//!
//! # The server
//!
//! `GET /metrics` (or `HEAD`) answers 200 with the Prometheus text format
//! (`text/plain; version=0.0.4`), or with OpenMetrics text when the request's `Accept`
//! header asks for `application/openmetrics-text` (as Prometheus does). Any other path is
//! 404, any other method 405, a malformed request 400, and a request line plus headers
//! over [`MAX_REQUEST`] bytes 431. Each connection carries one request and is closed
//! after the answer. A slow or hostile client cannot hurt the agent: each connection is
//! one task with a deadline ([`CONNECTION_TIMEOUT`]), at most [`MAX_CONNECTIONS`] are
//! served at once (others are closed at once), and the request is read into a bounded
//! buffer. The server has no authentication: bind it to loopback or a trusted network.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use herd_membership::{LoadReport, NodeState, NodeView};
use herd_proto::fs::{FsRequest, FsResponse};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::AgentError;
use crate::polite::Mode;

/// Bytes of request line and headers read at most; a longer request is answered 431.
pub const MAX_REQUEST: usize = 8 * 1024;
/// Connections served at once; more are closed without an answer.
pub const MAX_CONNECTIONS: usize = 8;
/// How long one connection may take, from accept to the end of the answer.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// Content type of the Prometheus text format.
pub const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";
/// Content type of the OpenMetrics text format.
pub const OPENMETRICS_FORMAT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Upper bounds of the task-duration buckets (seconds): 10 ms to 1 h.
const DURATION_BUCKETS: [f64; 18] = [
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    1200.0, 1800.0, 3600.0,
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OpLabel {
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabel {
    mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VersionLabel {
    version: &'static str,
}

const STATES: [&str; 4] = ["alive", "suspect", "dead", "left"];
const MODES: [&str; 3] = ["waiting", "running", "suspended"];
const OPS: [&str; 6] = ["stat", "list", "read", "readlink", "prefetch", "validate"];

/// The agent's metrics (see the module docs for the list). Shared through an [`Arc`];
/// every method takes `&self`.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    started: Family<NodeLabel, Counter>,
    finished: Family<NodeLabel, Counter>,
    failed: Family<NodeLabel, Counter>,
    retried: Family<NodeLabel, Counter>,
    evicted: Family<NodeLabel, Counter>,
    unplaceable: Counter,
    running: Gauge,
    queue_length: Gauge,
    duration: Histogram,
    fs_requests: Family<OpLabel, Counter>,
    fs_bytes: Counter,
    hosted: Counter,
    hosted_running: Gauge,
    hosted_evicted: Counter,
    cache_hits: Counter,
    cache_misses: Counter,
    owner_load: Gauge<f64, AtomicU64>,
    mode: Family<ModeLabel, Gauge>,
    accepting: Gauge,
    members: Family<StateLabel, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric at zero.
    pub fn new() -> Self {
        let mut m = Metrics {
            registry: Registry::with_prefix("herd"),
            started: Family::default(),
            finished: Family::default(),
            failed: Family::default(),
            retried: Family::default(),
            evicted: Family::default(),
            unplaceable: Counter::default(),
            running: Gauge::default(),
            queue_length: Gauge::default(),
            duration: Histogram::new(DURATION_BUCKETS),
            fs_requests: Family::default(),
            fs_bytes: Counter::default(),
            hosted: Counter::default(),
            hosted_running: Gauge::default(),
            hosted_evicted: Counter::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            owner_load: Gauge::default(),
            mode: Family::default(),
            accepting: Gauge::default(),
            members: Family::default(),
        };
        let r = &mut m.registry;
        r.register(
            "tasks_started",
            "Task attempts started, by the node they ran on",
            m.started.clone(),
        );
        r.register(
            "tasks_finished",
            "Task attempts that ran to the command's exit status (any code), by node",
            m.finished.clone(),
        );
        r.register(
            "tasks_failed",
            "Task attempts herd gave up without the command's exit status, by node",
            m.failed.clone(),
        );
        r.register(
            "tasks_retried",
            "Task attempts lost or evicted and queued again, by the node they were lost on",
            m.retried.clone(),
        );
        r.register(
            "tasks_evicted",
            "Task attempts evicted by their helper, by node",
            m.evicted.clone(),
        );
        r.register(
            "tasks_unplaceable",
            "Tasks that failed in the queue because no node could run them",
            m.unplaceable.clone(),
        );
        r.register(
            "tasks_running",
            "Task attempts of this workstation running now",
            m.running.clone(),
        );
        r.register(
            "queue_length",
            "Tasks waiting in this workstation's queue",
            m.queue_length.clone(),
        );
        r.register(
            "task_duration_seconds",
            "Time from a task's submission to its end, re-runs included",
            m.duration.clone(),
        );
        r.register(
            "fs_requests",
            "File questions from helpers, by operation",
            m.fs_requests.clone(),
        );
        r.register(
            "fs_bytes_served",
            "Bytes of file contents sent to helpers",
            m.fs_bytes.clone(),
        );
        r.register(
            "hosted_tasks",
            "Tasks whose sandbox started on this helper",
            m.hosted.clone(),
        );
        r.register(
            "hosted_tasks_running",
            "Tasks running on this helper now",
            m.hosted_running.clone(),
        );
        r.register(
            "hosted_tasks_evicted",
            "Tasks this helper evicted",
            m.hosted_evicted.clone(),
        );
        r.register(
            "cache_hits",
            "File contents served from this helper's cache",
            m.cache_hits.clone(),
        );
        r.register(
            "cache_misses",
            "File contents fetched from a workstation into this helper's cache",
            m.cache_misses.clone(),
        );
        r.register(
            "owner_load",
            "Cores the host's owner uses, herd's own use excluded",
            m.owner_load.clone(),
        );
        r.register(
            "helper_mode",
            "1 for the polite policy's current mode, 0 for the others",
            m.mode.clone(),
        );
        r.register(
            "helper_accepting",
            "1 when this node takes new work",
            m.accepting.clone(),
        );
        r.register(
            "members",
            "Nodes this agent sees in each membership state, itself included",
            m.members.clone(),
        );
        let build: Family<VersionLabel, Gauge> = Family::default();
        build
            .get_or_create(&VersionLabel {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        r.register(
            "build_info",
            "Always 1; labelled with herd's version",
            build,
        );
        // Every series of a fixed label set exists from the start, at zero.
        for state in STATES {
            m.members.get_or_create(&StateLabel { state }).set(0);
        }
        for mode in MODES {
            m.mode.get_or_create(&ModeLabel { mode }).set(0);
        }
        for op in OPS {
            m.fs_requests.get_or_create(&OpLabel { op }).inc_by(0);
        }
        m
    }

    /// Starts counting an attempt of a task submitted at `since` on `node`. The attempt
    /// counts as failed unless [`Attempt::finished`] or [`Attempt::retried`] says
    /// otherwise before it is dropped.
    pub fn attempt(self: &Arc<Self>, node: &str, since: Instant) -> Attempt {
        let node = NodeLabel {
            node: node.to_string(),
        };
        self.started.get_or_create(&node).inc();
        self.running.inc();
        Attempt {
            metrics: self.clone(),
            node,
            since,
            end: End::Failed,
            evicted: false,
        }
    }

    /// A queued task failed because no node could ever run it.
    pub fn task_unplaceable(&self) {
        self.unplaceable.inc();
    }

    /// A helper asked a file question.
    pub fn fs_request(&self, req: &FsRequest) {
        let op = match req {
            FsRequest::Stat { .. } => "stat",
            FsRequest::List { .. } => "list",
            FsRequest::Read { .. } => "read",
            FsRequest::ReadLink { .. } => "readlink",
            FsRequest::Prefetch { .. } => "prefetch",
            FsRequest::Validate { .. } => "validate",
        };
        self.fs_requests.get_or_create(&OpLabel { op }).inc();
    }

    /// A file question was answered with `resp`: counts the file contents it carries.
    pub fn fs_answered(&self, resp: &FsResponse) {
        let bytes = match resp {
            FsResponse::Data(d) => d.len(),
            FsResponse::Bundle(items) => items
                .iter()
                .filter_map(|i| i.data.as_ref())
                .map(Vec::len)
                .sum(),
            _ => 0,
        };
        self.fs_bytes.inc_by(bytes as u64);
    }

    /// A task's sandbox started on this helper.
    pub fn hosted_started(&self) {
        self.hosted.inc();
    }

    /// This helper evicted a task.
    pub fn hosted_evicted(&self) {
        self.hosted_evicted.inc();
    }

    /// Sets the gauges from the load report the agent just built, its polite policy's
    /// mode, the cluster as membership sees it, and the length of the queue.
    pub fn observe(&self, report: &LoadReport, mode: Mode, members: &[NodeView], queued: usize) {
        self.queue_length.set(queued as i64);
        self.hosted_running.set(i64::from(report.tasks));
        self.owner_load.set(f64::from(report.owner_load));
        self.accepting.set(i64::from(!report.draining));
        // The cache counts since it was opened: carry the counters up to it.
        let up = |c: &Counter, now: u64| c.inc_by(now.saturating_sub(c.get()));
        up(&self.cache_hits, report.cache_hits);
        up(&self.cache_misses, report.cache_misses);
        let current = match mode {
            Mode::Waiting => "waiting",
            Mode::Running => "running",
            Mode::Suspended { .. } => "suspended",
        };
        for m in MODES {
            let on = i64::from(m == current);
            self.mode.get_or_create(&ModeLabel { mode: m }).set(on);
        }
        let mut counts = [0i64; 4];
        for n in members {
            counts[match n.state {
                NodeState::Alive => 0,
                NodeState::Suspect => 1,
                NodeState::Dead => 2,
                NodeState::Left => 3,
            }] += 1;
        }
        for (state, count) in STATES.into_iter().zip(counts) {
            self.members.get_or_create(&StateLabel { state }).set(count);
        }
    }

    /// The metrics in OpenMetrics text (ends with `# EOF`).
    pub fn openmetrics(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail, and every metric here encodes.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// The metrics in the Prometheus text format (version 0.0.4).
    pub fn text(&self) -> String {
        to_prometheus_text(&self.openmetrics())
    }
}

/// Turns OpenMetrics text into the Prometheus text format: a counter's family takes
/// its samples' `_total` name, and `# UNIT` and `# EOF` lines go.
fn to_prometheus_text(open: &str) -> String {
    let counters: std::collections::HashSet<&str> = open
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open.len() + 16 * counters.len());
    for line in open.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let described = ["# HELP ", "# TYPE "].into_iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        match described {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Failed,
    Finished,
    Retried,
}

/// One attempt of a task on one node, counted when it is dropped: as finished,
/// retried, or (by default) failed. Made by [`Metrics::attempt`].
#[derive(Debug)]
pub struct Attempt {
    metrics: Arc<Metrics>,
    node: NodeLabel,
    since: Instant,
    end: End,
    evicted: bool,
}

impl Attempt {
    /// The command ran to its exit status and every change was committed.
    pub fn finished(&mut self) {
        self.end = End::Finished;
    }

    /// The attempt was lost and the task goes back to the queue.
    pub fn retried(&mut self) {
        self.end = End::Retried;
    }

    /// The helper evicted the attempt (it still ends as retried or failed).
    pub fn evicted(&mut self) {
        self.evicted = true;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let m = &self.metrics;
        m.running.dec();
        let counter = match self.end {
            End::Failed => &m.failed,
            End::Finished => &m.finished,
            End::Retried => &m.retried,
        };
        counter.get_or_create(&self.node).inc();
        if self.evicted {
            m.evicted.get_or_create(&self.node).inc();
        }
        if self.end != End::Retried {
            m.duration.observe(self.since.elapsed().as_secs_f64());
        }
    }
}

/// The running metrics server; dropping it stops it (connections being served finish
/// within [`CONNECTION_TIMEOUT`]).
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Binds `addr` and serves `metrics` on it.
    pub async fn bind(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<Server, AgentError> {
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            AgentError::Net(format!(
                "cannot serve metrics on {addr}: {e} (choose another --metrics address or port)"
            ))
        })?;
        let addr = listener
            .local_addr()
            .map_err(|e| AgentError::Net(format!("metrics listener: {e}")))?;
        tracing::info!(%addr, "serving metrics at http://{addr}/metrics");
        let task = tokio::spawn(accept_loop(listener, metrics));
        Ok(Server { addr, task })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the metrics server when `addr` is given (`herd agent --metrics`).
pub async fn start(
    addr: Option<SocketAddr>,
    metrics: &Arc<Metrics>,
) -> Result<Option<Server>, AgentError> {
    match addr {
        Some(a) => Server::bind(a, metrics.clone()).await.map(Some),
        None => Ok(None),
    }
}

async fn accept_loop(listener: TcpListener, metrics: Arc<Metrics>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::debug!("metrics: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            // Busy: close it at once rather than queue it.
            continue;
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ =
                tokio::time::timeout(CONNECTION_TIMEOUT, serve_connection(stream, &metrics)).await;
        });
    }
}

async fn serve_connection(mut stream: TcpStream, metrics: &Metrics) -> std::io::Result<()> {
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    let response = loop {
        if let Some(end) = head_end(&buf[..len]) {
            break answer(&String::from_utf8_lossy(&buf[..end]), metrics);
        }
        if len == buf.len() {
            break Response::error(431, "Request Header Fields Too Large");
        }
        let n = stream.read(&mut buf[len..]).await?;
        if n == 0 {
            if len == 0 {
                return Ok(());
            }
            break Response::error(400, "Bad Request");
        }
        len += n;
    };
    stream.write_all(&response.to_bytes()).await?;
    stream.shutdown().await
}

/// Where the request's head (request line and headers) ends, if it does.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// An HTTP answer.
#[derive(Debug)]
struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    /// `HEAD`: headers only.
    head_only: bool,
    allow: bool,
}

impl Response {
    fn error(status: u16, reason: &'static str) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: format!("{status} {reason}\n"),
            head_only: false,
            allow: status == 405,
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len()
        );
        if self.allow {
            out.push_str("Allow: GET, HEAD\r\n");
        }
        out.push_str("\r\n");
        if !self.head_only {
            out.push_str(&self.body);
        }
        out.into_bytes()
    }
}

/// Answers a request given its head.
fn answer(head: &str, metrics: &Metrics) -> Response {
    let mut lines = head.lines();
    let mut words = lines.next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (words.next(), words.next(), words.next(), words.next())
    else {
        return Response::error(400, "Bad Request");
    };
    if !version.starts_with("HTTP/1.") {
        return Response::error(400, "Bad Request");
    }
    let path = target.split('?').next().unwrap_or("");
    if path != "/metrics" {
        return Response::error(404, "Not Found");
    }
    if method != "GET" && method != "HEAD" {
        return Response::error(405, "Method Not Allowed");
    }
    let openmetrics = lines.any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("accept") && v.contains("application/openmetrics-text")
        })
    });
    let (content_type, body) = if openmetrics {
        (OPENMETRICS_FORMAT, metrics.openmetrics())
    } else {
        (TEXT_FORMAT, metrics.text())
    };
    Response {
        status: 200,
        reason: "OK",
        content_type,
        body,
        head_only: method == "HEAD",
        allow: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counts a few of everything; returns an attempt still running.
    fn sample(metrics: &Arc<Metrics>) -> Attempt {
        let t0 = Instant::now();
        let mut a = metrics.attempt("h1", t0);
        a.finished();
        drop(a);
        let mut b = metrics.attempt("h1", t0);
        b.evicted();
        b.retried();
        drop(b);
        let failed = metrics.attempt("h2", t0);
        let running = metrics.attempt("h2", t0);
        drop(failed);
        metrics.fs_request(&FsRequest::Read {
            path: b"/x".to_vec(),
            offset: 0,
            len: 10,
        });
        metrics.fs_answered(&FsResponse::Data(vec![0; 10]));
        metrics.fs_answered(&FsResponse::Bundle(vec![herd_proto::fs::Prefetched {
            path: b"/lib".to_vec(),
            attr: None,
            target: None,
            data: Some(vec![0; 5]),
        }]));
        let report = LoadReport {
            tasks: 2,
            owner_load: 1.5,
            cache_hits: 7,
            cache_misses: 3,
            ..Default::default()
        };
        metrics.observe(&report, Mode::Running, &[], 4);
        // A later report with the same cache counts adds nothing.
        metrics.observe(&report, Mode::Running, &[], 4);
        running
    }

    /// Every line of `want` is a line of `text`.
    fn check(text: &str, want: &[&str]) {
        for w in want {
            assert!(text.lines().any(|l| l == *w), "no line {w:?} in:\n{text}");
        }
    }

    #[test]
    fn prometheus_text_names_types_and_labels() {
        let m = Arc::new(Metrics::new());
        let _running = sample(&m);
        let text = m.text();
        check(
            &text,
            &[
                "# TYPE herd_tasks_started_total counter",
                "herd_tasks_started_total{node=\"h1\"} 2",
                "herd_tasks_started_total{node=\"h2\"} 2",
                "# TYPE herd_tasks_finished_total counter",
                "herd_tasks_finished_total{node=\"h1\"} 1",
                "herd_tasks_failed_total{node=\"h2\"} 1",
                "herd_tasks_retried_total{node=\"h1\"} 1",
                "herd_tasks_evicted_total{node=\"h1\"} 1",
                "# TYPE herd_tasks_unplaceable_total counter",
                "herd_tasks_unplaceable_total 0",
                "# TYPE herd_tasks_running gauge",
                "herd_tasks_running 1",
                "# TYPE herd_queue_length gauge",
                "herd_queue_length 4",
                "# TYPE herd_task_duration_seconds histogram",
                "herd_task_duration_seconds_count 2",
                "herd_task_duration_seconds_bucket{le=\"3600.0\"} 2",
                "herd_task_duration_seconds_bucket{le=\"+Inf\"} 2",
                "herd_fs_requests_total{op=\"read\"} 1",
                "herd_fs_requests_total{op=\"stat\"} 0",
                "herd_fs_bytes_served_total 15",
                "herd_cache_hits_total 7",
                "herd_cache_misses_total 3",
                "herd_hosted_tasks_running 2",
                "# TYPE herd_hosted_tasks_total counter",
                "herd_owner_load 1.5",
                "herd_helper_mode{mode=\"running\"} 1",
                "herd_helper_mode{mode=\"suspended\"} 0",
                "herd_helper_accepting 1",
                "herd_members{state=\"alive\"} 0",
                "herd_members{state=\"left\"} 0",
                &format!(
                    "herd_build_info{{version=\"{}\"}} 1",
                    env!("CARGO_PKG_VERSION")
                ),
            ],
        );
        assert!(text.contains("# HELP herd_tasks_started_total Task attempts started"));
        assert!(!text.contains("# EOF"), "{text}");
        // Every sample belongs to the family its TYPE line names.
        let mut family = "";
        for line in text.lines() {
            if let Some(t) = line.strip_prefix("# TYPE ") {
                family = t.split(' ').next().unwrap();
            } else if !line.starts_with('#') {
                assert!(line.starts_with(family), "{line:?} outside {family}");
                assert!(line.starts_with("herd_"), "{line}");
            }
        }
    }

    #[test]
    fn openmetrics_keeps_its_own_conventions() {
        let m = Arc::new(Metrics::new());
        let _running = sample(&m);
        let text = m.openmetrics();
        check(
            &text,
            &[
                "# TYPE herd_tasks_started counter",
                "herd_tasks_started_total{node=\"h1\"} 2",
                "# EOF",
            ],
        );
    }

    #[test]
    fn requests_are_answered_by_path_and_method() {
        let m = Metrics::new();
        let ok = answer("GET /metrics HTTP/1.1\r\nHost: x", &m);
        assert_eq!((ok.status, ok.content_type), (200, TEXT_FORMAT));
        assert!(ok.body.contains("herd_queue_length 0"));
        let om = answer(
            "GET /metrics?x=1 HTTP/1.1\r\naccept: application/openmetrics-text;version=1.0.0,text/plain;q=0.5",
            &m,
        );
        assert_eq!((om.status, om.content_type), (200, OPENMETRICS_FORMAT));
        let head = answer("HEAD /metrics HTTP/1.0", &m);
        assert!(head.head_only && head.to_bytes().ends_with(b"\r\n\r\n"));
        assert_eq!(answer("GET / HTTP/1.1", &m).status, 404);
        assert_eq!(answer("GET /metricsx HTTP/1.1", &m).status, 404);
        assert_eq!(answer("POST /metrics HTTP/1.1", &m).status, 405);
        assert_eq!(answer("GET /metrics", &m).status, 400);
        assert_eq!(answer("GET /metrics SPDY/3", &m).status, 400);
        assert_eq!(answer("", &m).status, 400);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest"), Some(20));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // The server may answer and close before all of an oversized request is sent.
        let _ = s.write_all(request).await;
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
            .await
            .expect("the server must answer and close");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[tokio::test]
    async fn server_serves_metrics_refuses_the_rest_and_survives_bad_clients() {
        let m = Arc::new(Metrics::new());
        m.observe(&LoadReport::default(), Mode::Waiting, &[], 3);
        let server = Server::bind("127.0.0.1:0".parse().unwrap(), m.clone())
            .await
            .unwrap();
        let addr = server.local_addr();

        // A client that connects and says nothing holds one slot, not the server.
        let _idle = TcpStream::connect(addr).await.unwrap();

        let ok = exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains(&format!("Content-Type: {TEXT_FORMAT}\r\n")),
            "{ok}"
        );
        assert!(ok.contains("\nherd_queue_length 3\n"), "{ok}");
        let body = ok.split_once("\r\n\r\n").unwrap().1;
        assert!(
            ok.contains(&format!("Content-Length: {}\r\n", body.len())),
            "{ok}"
        );

        let missing = exchange(addr, b"GET /other HTTP/1.1\r\n\r\n").await;
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );

        let mut big = b"GET /metrics HTTP/1.1\r\nX-Pad: ".to_vec();
        big.resize(MAX_REQUEST + 1024, b'a');
        let huge = exchange(addr, &big).await;
        assert!(huge.starts_with("HTTP/1.1 431 "), "{huge}");

        let cut = {
            let mut s = TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET /metr").await.unwrap();
            s.shutdown().await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        assert!(cut.starts_with("HTTP/1.1 400 "), "{cut}");

        // Still serving.
        let again = exchange(addr, b"GET /metrics HTTP/1.0\r\n\r\n").await;
        assert!(again.starts_with("HTTP/1.1 200 OK\r\n"), "{again}");

        // Dropping the server closes the port.
        drop(server);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(TcpStream::connect(addr).await.is_err());
    }

    #[tokio::test]
    async fn a_port_in_use_is_a_clear_error() {
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = held.local_addr().unwrap();
        let err = Server::bind(addr, Arc::new(Metrics::new()))
            .await
            .unwrap_err();
        assert_eq!(err.exit_code(), 1);
        assert!(
            err.to_string()
                .contains(&format!("cannot serve metrics on {addr}")),
            "{err}"
        );
    }
}
