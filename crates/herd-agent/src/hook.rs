//! A test seam: replacing how a helper serves the tasks sent to it.
//!
//! [`AgentOptions::run_hook`](crate::AgentOptions::run_hook) hands every
//! `PeerRequest::Run` this node accepts (after the sender's `submit` role was
//! checked) to a [`RunHook`] instead of the sandbox. Tests use it to play a hostile
//! helper: a node with a real exec certificate that sends the workstation whatever the
//! test says. It is not reachable from the command line: only a program that builds
//! [`AgentOptions`](crate::AgentOptions) itself can set it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// One task sent to this node, with everything needed to answer it as a helper would:
/// the connection (for `PeerRequest::Fs` questions on new streams) and the task's own
/// stream (where [`herd_proto::TaskOutput`] frames go, [`herd_proto::TaskInput`] frames
/// come from).
pub struct RunCall {
    /// The workstation's connection.
    pub conn: quinn::Connection,
    /// The workstation's certificate.
    pub peer: herd_pki::PeerCert,
    /// The task's stream, towards the workstation.
    pub send: quinn::SendStream,
    /// The task's stream, from the workstation.
    pub recv: quinn::RecvStream,
    /// The task's id.
    pub task: u64,
    /// What the workstation asked for.
    pub spec: herd_proto::TaskSpec,
}

/// The future a [`RunHook`] returns: it serves one task.
pub type RunFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Serves `PeerRequest::Run` in place of the sandbox (see the module's documentation).
#[derive(Clone)]
pub struct RunHook(pub Arc<dyn Fn(RunCall) -> RunFuture + Send + Sync>);

impl RunHook {
    /// A hook from a function returning the future that serves one task.
    pub fn new<F, Fut>(f: F) -> RunHook
    where
        F: Fn(RunCall) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        RunHook(Arc::new(move |call| Box::pin(f(call))))
    }
}

impl std::fmt::Debug for RunHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RunHook(..)")
    }
}
