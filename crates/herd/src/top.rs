//! `herd top`: the cluster live on a full-screen terminal. One row per host (state,
//! granted cores, a load bar splitting the owner's load from herd's, memory, tasks,
//! cache hit rate), the workstation's tasks, and the throughput over time; keys sort,
//! filter, drain and undrain hosts and kill tasks.
//!
//! [`model`] holds the state and turns keys into actions, with no I/O; [`view`] draws
//! it with ratatui. This module is the driver: it asks the local agent for `Nodes`,
//! `Ps` and `Status` every second on a thread of its own, reads keys and resizes
//! with crossterm, carries out drains and kills, and puts the terminal back on every
//! way out (return, error or panic). It only writes ANSI sequences to stdout, so it
//! works over ssh.
//!
//! When stdout is not a terminal, or with `--once`, it prints one snapshot as plain
//! text instead (the same drawing, without colours or keys).

pub mod model;
pub mod view;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use crossterm::{cursor, execute, terminal};
use herd_agent::local;
use herd_agent::state::StateDir;
use herd_proto::{LocalRequest, LocalResponse};
use ratatui::Terminal;
use ratatui::backend::{CrosstermBackend, TestBackend};

use model::{Action, Key, Model, Snapshot};
use view::Look;

/// How often the agent is asked.
pub const POLL: Duration = Duration::from_secs(1);
/// How long one question to the agent may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Width of `--once`'s text unless `COLUMNS` says otherwise.
const ONCE_WIDTH: u16 = 100;

/// Runs `herd top` against the agent of `dir`: full screen on a terminal, else (or
/// with `once`) one plain-text snapshot. Fails, before touching the terminal, if the
/// agent cannot be asked; afterwards failures show on the screen.
pub fn top(dir: &StateDir, once: bool) -> anyhow::Result<ExitCode> {
    let start = Instant::now();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let first = rt.block_on(fetch(dir))?;
    let mut model = Model::new();
    model.observe(first, 0.0);
    if once || !std::io::stdout().is_terminal() {
        print_once(&mut model)?;
        return Ok(ExitCode::SUCCESS);
    }
    run_screen(dir, &rt, model, start)?;
    Ok(ExitCode::SUCCESS)
}

/// One question to the agent; its refusal is an error.
async fn ask(dir: &StateDir, req: LocalRequest) -> anyhow::Result<LocalResponse> {
    match tokio::time::timeout(CALL_TIMEOUT, local::call(dir, &req)).await {
        Err(_) => anyhow::bail!(
            "the agent did not answer within {} s",
            CALL_TIMEOUT.as_secs()
        ),
        Ok(r) => match r? {
            LocalResponse::Error(e) => anyhow::bail!("the agent refused: {e}"),
            r => Ok(r),
        },
    }
}

/// One snapshot: nodes, tasks and status.
async fn fetch(dir: &StateDir) -> anyhow::Result<Snapshot> {
    let unexpected = |r: LocalResponse| anyhow::anyhow!("unexpected answer from the agent: {r:?}");
    let nodes = match ask(dir, LocalRequest::Nodes).await? {
        LocalResponse::Nodes(n) => n,
        r => return Err(unexpected(r)),
    };
    let tasks = match ask(dir, LocalRequest::Ps).await? {
        LocalResponse::Ps(t) => t,
        r => return Err(unexpected(r)),
    };
    let status = match ask(dir, LocalRequest::Status).await? {
        LocalResponse::Status(s) => s,
        r => return Err(unexpected(r)),
    };
    Ok(Snapshot {
        nodes,
        tasks,
        status,
    })
}

/// Carries out a drain or kill; the agent's refusal comes back as the message.
fn perform(rt: &tokio::runtime::Runtime, dir: &StateDir, action: &Action) -> Result<(), String> {
    let req = match action {
        Action::Kill(id) => LocalRequest::Kill(*id),
        Action::Drain { node, drain } => LocalRequest::Drain {
            node: node.clone(),
            drain: *drain,
        },
        Action::None | Action::Quit | Action::Refresh => return Ok(()),
    };
    match rt.block_on(ask(dir, req)) {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("{e:#}")
            .trim_start_matches("the agent refused: ")
            .to_string()),
    }
}

/// Prints one snapshot as text.
fn print_once(model: &mut Model) -> anyhow::Result<()> {
    let width = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<u16>().ok())
        .filter(|w| *w >= view::MIN_WIDTH)
        .unwrap_or(ONCE_WIDTH);
    let mut term = Terminal::new(TestBackend::new(width, view::once_height(model)))?;
    let look = Look {
        interactive: false,
        color: false,
    };
    term.draw(|f| view::draw(f, model, look))?;
    let text = view::buffer_text(term.backend().buffer());
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("cannot write to stdout")
        }
        _ => Ok(()),
    }
}

/// Raw mode and the alternate screen, undone when dropped (return, error or unwinding
/// panic) and by the panic hook (a panic that aborts).
struct Screen;

impl Screen {
    fn enter() -> std::io::Result<Screen> {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
        terminal::enable_raw_mode()?;
        // From here on, dropping the guard undoes what was done.
        let screen = Screen;
        execute!(
            std::io::stdout(),
            terminal::EnterAlternateScreen,
            cursor::Hide
        )?;
        Ok(screen)
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

fn restore() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(
        std::io::stdout(),
        terminal::LeaveAlternateScreen,
        cursor::Show
    );
}

/// A crossterm key as `herd top` sees it (none for releases and keys it ignores).
fn key_of(k: KeyEvent) -> Option<Key> {
    if k.kind == KeyEventKind::Release {
        return None;
    }
    if k.modifiers.contains(KeyModifiers::CONTROL) {
        return (k.code == KeyCode::Char('c')).then_some(Key::Interrupt);
    }
    Some(match k.code {
        KeyCode::Char(c) => Key::Char(c),
        KeyCode::Enter => Key::Enter,
        KeyCode::Esc => Key::Esc,
        KeyCode::Tab => Key::Tab,
        KeyCode::BackTab => Key::BackTab,
        KeyCode::Up => Key::Up,
        KeyCode::Down => Key::Down,
        KeyCode::PageUp => Key::PageUp,
        KeyCode::PageDown => Key::PageDown,
        KeyCode::Home => Key::Home,
        KeyCode::End => Key::End,
        KeyCode::Backspace => Key::Backspace,
        _ => return None,
    })
}

/// Polls the agent every [`POLL`] (or at once when nudged) until the screen goes.
fn spawn_poller(
    dir: StateDir,
    snapshots: mpsc::Sender<Result<Snapshot, String>>,
    nudge: mpsc::Receiver<()>,
) {
    std::thread::spawn(move || {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                let _ = snapshots.send(Err(format!("cannot start the async runtime: {e}")));
                return;
            }
        };
        loop {
            match nudge.recv_timeout(POLL) {
                Ok(()) | Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
            let snap = rt.block_on(fetch(&dir)).map_err(|e| format!("{e:#}"));
            if snapshots.send(snap).is_err() {
                return;
            }
        }
    });
}

/// Clears the screen and forgets what is on it, so the next draw paints everything.
fn redraw_all<B: ratatui::backend::Backend>(term: &mut Terminal<B>) -> Result<(), B::Error> {
    let size = term.size()?;
    term.resize(size.into())
}

fn run_screen(
    dir: &StateDir,
    rt: &tokio::runtime::Runtime,
    mut model: Model,
    start: Instant,
) -> anyhow::Result<()> {
    let look = Look {
        interactive: true,
        color: std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    };
    let (snap_tx, snapshots) = mpsc::channel();
    let (nudge, nudged) = mpsc::channel();
    spawn_poller(dir.clone(), snap_tx, nudged);

    let _screen = Screen::enter().context("cannot set up the terminal")?;
    let mut term = Terminal::new(CrosstermBackend::new(std::io::stdout()))?;
    // Not `Terminal::clear`: it asks the terminal where the cursor is, and a terminal
    // that does not answer would stall herd top and fail it.
    redraw_all(&mut term)?;
    let mut dirty = true;
    loop {
        while let Ok(snap) = snapshots.try_recv() {
            match snap {
                Ok(s) => model.observe(s, start.elapsed().as_secs_f64()),
                Err(e) => model.poll_failed(e),
            }
            dirty = true;
        }
        if dirty {
            term.draw(|f| view::draw(f, &mut model, look))?;
            dirty = false;
        }
        if !event::poll(Duration::from_millis(100))? {
            continue;
        }
        match event::read()? {
            Event::Key(k)
                if k.modifiers.contains(KeyModifiers::CONTROL) && k.code == KeyCode::Char('l') =>
            {
                redraw_all(&mut term)?;
                dirty = true;
            }
            Event::Key(k) => {
                let Some(key) = key_of(k) else { continue };
                let action = model.key(key);
                match action {
                    Action::Quit => return Ok(()),
                    Action::None => {}
                    Action::Refresh => {
                        let _ = nudge.send(());
                    }
                    Action::Kill(_) | Action::Drain { .. } => {
                        let result = perform(rt, dir, &action);
                        model.done(&action, result);
                        let _ = nudge.send(());
                    }
                }
                dirty = true;
            }
            Event::Resize(..) => dirty = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_crossterm() {
        let k = |code, modifiers| key_of(KeyEvent::new(code, modifiers));
        assert_eq!(
            k(KeyCode::Char('K'), KeyModifiers::SHIFT),
            Some(Key::Char('K'))
        );
        assert_eq!(
            k(KeyCode::Char('c'), KeyModifiers::CONTROL),
            Some(Key::Interrupt)
        );
        assert_eq!(k(KeyCode::Char('x'), KeyModifiers::CONTROL), None);
        assert_eq!(k(KeyCode::F(1), KeyModifiers::NONE), None);
        let mut release = KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE);
        release.kind = KeyEventKind::Release;
        assert_eq!(key_of(release), None);
    }
}
