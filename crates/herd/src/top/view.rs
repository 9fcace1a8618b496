//! Drawing `herd top` with ratatui: a header line, the host table (with a load bar
//! that splits the owner's load from herd's), the task table, the throughput chart,
//! a status line and a key line. Everything is sized from the frame, so it fits 80x24
//! and follows resizes; below [`MIN_WIDTH`]x[`MIN_HEIGHT`] it only says so.
//!
//! The same drawing, without colour, selection and key line, makes `herd top --once`'s
//! plain text ([`buffer_text`]).

use ratatui::Frame;
use ratatui::buffer::Buffer;
use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Block, Borders, Cell, Clear, Paragraph, RenderDirection, Row, Sparkline, Table, TableState,
    Wrap,
};

use super::model::{HostRow, HostState, Mode, Model, Notice, Pane};

/// The load bar's glyph for the owner's load.
pub const OWNER: char = '▒';
/// The load bar's glyph for herd's load.
pub const HERD: char = '█';
/// The load bar's glyph for granted cores left idle.
pub const IDLE: char = '·';
/// Narrower than this, only a message is drawn.
pub const MIN_WIDTH: u16 = 40;
/// Lower than this, only a message is drawn.
pub const MIN_HEIGHT: u16 = 12;

/// How to draw.
#[derive(Clone, Copy, Debug)]
pub struct Look {
    /// A live screen: selection, status line and key line (not for `--once`).
    pub interactive: bool,
    /// Use colours (off for `--once` and with `NO_COLOR`).
    pub color: bool,
}

/// Rows of the chart, its title line included (only that line for `--once`, which
/// has no history to chart).
fn chart_height(area: Rect, look: Look) -> u16 {
    match (look.interactive, area.height) {
        (false, _) => 1,
        (true, 40..) => 8,
        (true, _) => 3,
    }
}

/// Rows a list of `n` items wants (at least one, for its "nothing here" line).
fn rows(n: usize) -> u16 {
    u16::try_from(n.max(1)).unwrap_or(u16::MAX).min(10_000)
}

/// The height `--once` needs to show every host and task.
pub fn once_height(model: &Model) -> u16 {
    let hosts = rows(model.host_rows().len());
    let tasks = rows(model.task_rows().len());
    (1 + hosts + 3 + tasks + 3 + 1).max(MIN_HEIGHT)
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, model: &mut Model, look: Look) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let msg = format!(
            "herd top needs at least {MIN_WIDTH}x{MIN_HEIGHT} (this is {}x{}); q quits",
            area.width, area.height
        );
        frame.render_widget(Paragraph::new(msg).wrap(Wrap { trim: true }), area);
        return;
    }
    let theme = Theme { color: look.color };
    let hosts = model.host_rows();
    let tasks = model.task_rows();
    let bottom = if look.interactive { 1 } else { 0 };
    let status = status_line(model, &theme);
    // A long message wraps onto a second line rather than lose its end.
    let status_h = if status.width() > area.width as usize {
        2
    } else {
        1
    } * bottom;
    let chart = chart_height(area, look);
    let avail = area.height - 1 - bottom - status_h - chart;
    let (host_h, task_h) = split(avail, rows(hosts.len()) + 3, rows(tasks.len()) + 3);
    let [
        head,
        host_area,
        task_area,
        chart_area,
        status_area,
        keys_area,
    ] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(host_h),
        Constraint::Length(task_h),
        Constraint::Length(chart),
        Constraint::Length(status_h),
        Constraint::Length(bottom),
    ])
    .areas(area);

    frame.render_widget(Paragraph::new(header(model, &theme)), head);
    host_table(frame, host_area, model, &hosts, look, &theme);
    task_table(frame, task_area, model, look, &theme, tasks);
    throughput(frame, chart_area, model, look, &theme);
    if look.interactive {
        frame.render_widget(
            Paragraph::new(status).wrap(Wrap { trim: false }),
            status_area,
        );
        frame.render_widget(Paragraph::new(key_line(model, &theme)), keys_area);
        if *model.mode() == Mode::Help {
            help(frame, area, &theme);
        }
    }
}

/// Heights of the host and task tables: each gets what it wants if both fit, else
/// the hosts get up to half (more if the tasks need less).
fn split(avail: u16, want_hosts: u16, want_tasks: u16) -> (u16, u16) {
    if want_hosts.saturating_add(want_tasks) <= avail {
        return (want_hosts, avail - want_hosts);
    }
    let hosts = want_hosts
        .min((avail / 2).max(avail.saturating_sub(want_tasks)))
        .max(4.min(avail));
    (hosts, avail - hosts)
}

struct Theme {
    color: bool,
}

impl Theme {
    fn fg(&self, c: Color) -> Style {
        if self.color {
            Style::new().fg(c)
        } else {
            Style::new()
        }
    }

    fn state(&self, s: HostState) -> Style {
        self.fg(match s {
            HostState::Alive => Color::Green,
            HostState::Drained => Color::Magenta,
            HostState::Held | HostState::Suspect => Color::Yellow,
            HostState::Dead | HostState::Revoked => Color::Red,
            HostState::Left => Color::DarkGray,
        })
    }
}

fn bold() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

fn header(model: &Model, theme: &Theme) -> Line<'static> {
    let mut spans = vec![Span::styled("herd top", bold())];
    // First, so that a narrow screen never cuts it off.
    if model.poll_error().is_some() {
        spans.push(Span::styled(" · stale", theme.fg(Color::Red).patch(bold())));
    }
    match model.status() {
        Some(st) => {
            let (alive, total) = model.node_counts();
            spans.push(Span::raw(format!(
                " · cluster {} · node {} · {alive}/{total} alive · {:.1} cores · {} queued · {} running",
                st.cluster,
                st.name,
                model.cores(),
                st.queued,
                st.running
            )));
        }
        None => spans.push(Span::raw(" · waiting for the agent")),
    }
    Line::from(spans)
}

fn title(name: &str, sort: &str, reverse: bool, filter: &str, focused: bool) -> Line<'static> {
    let mut spans = vec![Span::styled(
        format!(" {}{name} ", if focused { "▸ " } else { "" }),
        bold(),
    )];
    spans.push(Span::raw(format!(
        "sort {sort}{} ",
        if reverse { " (reversed)" } else { "" }
    )));
    if !filter.is_empty() {
        spans.push(Span::raw(format!("· filter \"{filter}\" ")));
    }
    Line::from(spans)
}

fn host_table(
    frame: &mut Frame,
    area: Rect,
    model: &mut Model,
    rows: &[HostRow],
    look: Look,
    theme: &Theme,
) {
    let focused = look.interactive && model.focus() == Pane::Hosts;
    let (sort, reverse) = model.host_sort();
    let legend = Line::from(vec![
        Span::styled(OWNER.to_string(), theme.fg(Color::Yellow)),
        Span::raw(" owner "),
        Span::styled(HERD.to_string(), theme.fg(Color::Green)),
        Span::raw(" herd "),
    ])
    .right_aligned();
    let block = Block::new()
        .borders(Borders::ALL)
        .border_style(if focused {
            theme.fg(Color::Cyan)
        } else {
            Style::new()
        })
        .title(title(
            "Hosts",
            sort.label(),
            reverse,
            model.filter(Pane::Hosts),
            focused,
        ))
        .title_top(legend);

    // Fixed columns first; the load column takes the rest.
    let inner = area.width.saturating_sub(2);
    let wide = inner >= 110;
    let name_w = if wide { 20 } else { 12 };
    let mut widths: Vec<u16> = vec![name_w, 7, 5, 0, 9, 5, 4];
    if wide {
        widths.push(21);
    }
    let fixed: u16 = widths.iter().sum::<u16>() + widths.len() as u16 - 1;
    let load_w = inner.saturating_sub(fixed).max(6);
    let numbers = load_w >= 18;
    let bar_w = if numbers { load_w - 12 } else { load_w }.min(48);
    widths[3] = bar_w + if numbers { 12 } else { 0 };

    let mut head = vec![
        "NAME",
        "STATE",
        "CORES",
        "LOAD",
        "   MEMORY",
        "TASKS",
        " HIT",
    ];
    if wide {
        head.push("ADDRESS");
    }
    let table_rows: Vec<Row> = rows
        .iter()
        .map(|r| {
            let up = matches!(
                r.state,
                HostState::Alive | HostState::Held | HostState::Drained
            );
            let mut load = if up {
                bar(r.cpus, r.owner, r.herd, bar_w, theme)
            } else {
                vec![Span::styled(
                    IDLE.to_string().repeat(bar_w as usize),
                    theme.fg(Color::DarkGray),
                )]
            };
            if numbers {
                load.push(Span::raw(if up {
                    format!(" {:>4.1}o {:>4.1}h", r.owner, r.herd)
                } else {
                    format!(" {:>4}  {:>4} ", "-", "-")
                }));
            }
            let name = if r.local {
                format!("{}*", r.name)
            } else {
                r.name.clone()
            };
            let mut cells = vec![
                Cell::from(fit(&name, name_w as usize)),
                Cell::from(Span::styled(r.state.label(), theme.state(r.state))),
                Cell::from(if r.exec {
                    format!("{:>5.1}", r.cpus)
                } else {
                    format!("{:>5}", "-")
                }),
                Cell::from(Line::from(load)),
                Cell::from(if r.mem_total > 0 {
                    format!(
                        "{:>9}",
                        format!("{}/{}", short_bytes(r.mem_free), short_bytes(r.mem_total))
                    )
                } else {
                    format!("{:>9}", "-")
                }),
                Cell::from(format!("{:>5}", r.tasks)),
                Cell::from(match r.hit {
                    Some(h) => format!("{:>3.0}%", h * 100.0),
                    None => format!("{:>4}", "-"),
                }),
            ];
            if wide {
                cells.push(Cell::from(r.addr.clone()));
            }
            Row::new(cells)
        })
        .collect();
    let table = Table::new(table_rows, widths.iter().map(|w| Constraint::Length(*w)))
        .header(Row::new(head).style(bold()))
        .block(block)
        .column_spacing(1)
        .row_highlight_style(if focused {
            Style::new().add_modifier(Modifier::REVERSED)
        } else {
            Style::new()
        });
    let mut state = TableState::new()
        .with_offset(model.scroll(Pane::Hosts))
        .with_selected(if look.interactive {
            model.selected_host(rows)
        } else {
            None
        });
    frame.render_stateful_widget(table, area, &mut state);
    model.set_scroll(
        Pane::Hosts,
        state.offset(),
        area.height.saturating_sub(3) as usize,
    );
}

/// The load bar: the owner's load, then herd's, then idle granted cores, scaled to
/// the granted cores (or the load, when that is higher). A load too small to fill a
/// cell still shows as one.
fn bar(cpus: f32, owner: f32, herd: f32, width: u16, theme: &Theme) -> Vec<Span<'static>> {
    let (owner_n, herd_n) = bar_cells(cpus, owner, herd, width);
    let idle = width as usize - owner_n - herd_n;
    vec![
        Span::styled(OWNER.to_string().repeat(owner_n), theme.fg(Color::Yellow)),
        Span::styled(HERD.to_string().repeat(herd_n), theme.fg(Color::Green)),
        Span::styled(IDLE.to_string().repeat(idle), theme.fg(Color::DarkGray)),
    ]
}

/// Cells of the bar for the owner's load and for herd's.
fn bar_cells(cpus: f32, owner: f32, herd: f32, width: u16) -> (usize, usize) {
    let width = width as usize;
    let scale = cpus.max(owner + herd);
    if scale <= 0.0 || width == 0 {
        return (0, 0);
    }
    let cells = |x: f32| {
        let n = (x / scale * width as f32).round() as usize;
        if x >= 0.05 { n.max(1) } else { n }
    };
    let owner_n = cells(owner).min(width);
    let herd_n = cells(herd).min(width - owner_n);
    (owner_n, herd_n)
}

fn task_table(
    frame: &mut Frame,
    area: Rect,
    model: &mut Model,
    look: Look,
    theme: &Theme,
    rows: Vec<herd_proto::TaskInfo>,
) {
    let focused = look.interactive && model.focus() == Pane::Tasks;
    let (sort, reverse) = model.task_sort();
    let filter = model.filter(Pane::Tasks).to_string();
    let block = Block::new()
        .borders(Borders::ALL)
        .border_style(if focused {
            theme.fg(Color::Cyan)
        } else {
            Style::new()
        })
        .title(title("Tasks", sort.label(), reverse, &filter, focused));
    if rows.is_empty() {
        let msg = if filter.is_empty() {
            "no tasks queued or running".to_string()
        } else {
            format!("no task matches \"{filter}\"")
        };
        frame.render_widget(
            Paragraph::new(msg)
                .style(theme.fg(Color::DarkGray))
                .block(block),
            area,
        );
        return;
    }
    let wide = area.width.saturating_sub(2) >= 110;
    let host_w = if wide { 20 } else { 12 };
    let mut widths = vec![
        Constraint::Length(6),
        Constraint::Length(7),
        Constraint::Length(host_w),
        Constraint::Length(6),
    ];
    let mut head = vec!["    ID", "STATE", "HOST", "  TIME"];
    if wide {
        widths.extend([Constraint::Length(6), Constraint::Length(4)]);
        head.extend(["   UID", "LOST"]);
    }
    widths.push(Constraint::Fill(1));
    head.push("COMMAND");
    let selected = if look.interactive {
        model.selected_task(&rows)
    } else {
        None
    };
    let table_rows: Vec<Row> = rows
        .iter()
        .map(|t| {
            let state_style = if t.state == "running" {
                theme.fg(Color::Green)
            } else {
                theme.fg(Color::Yellow)
            };
            let mut cells = vec![
                Cell::from(format!("{:>6}", t.id)),
                Cell::from(Span::styled(t.state.clone(), state_style)),
                Cell::from(fit(t.node.as_deref().unwrap_or("-"), host_w as usize)),
                Cell::from(format!("{:>6}", duration(t.secs))),
            ];
            if wide {
                cells.push(Cell::from(format!("{:>6}", t.uid)));
                cells.push(Cell::from(format!("{:>4}", t.lost)));
            }
            cells.push(Cell::from(t.command.clone()));
            Row::new(cells)
        })
        .collect();
    let table = Table::new(table_rows, widths)
        .header(Row::new(head).style(bold()))
        .block(block)
        .column_spacing(1)
        .row_highlight_style(if focused {
            Style::new().add_modifier(Modifier::REVERSED)
        } else {
            Style::new()
        });
    let mut state = TableState::new()
        .with_offset(model.scroll(Pane::Tasks))
        .with_selected(selected);
    frame.render_stateful_widget(table, area, &mut state);
    model.set_scroll(
        Pane::Tasks,
        state.offset(),
        area.height.saturating_sub(3) as usize,
    );
}

fn throughput(frame: &mut Frame, area: Rect, model: &Model, look: Look, theme: &Theme) {
    let t = model.throughput();
    let figures = match (t.now, t.average) {
        (Some(now), Some(avg)) => format!(
            "{now:.1} tasks/s now · {avg:.1}/s over {}s · {} ended ",
            super::model::AVERAGE_SECS,
            t.total
        ),
        _ if look.interactive => "measuring… ".to_string(),
        _ => "needs two snapshots: run herd top on a terminal ".to_string(),
    };
    let block = Block::new().borders(Borders::TOP).title(Line::from(vec![
        Span::styled(" Throughput ", bold()),
        Span::raw(figures),
    ]));
    let inner = block.inner(area);
    let shown = t.counts.len().min(inner.width as usize);
    let block = if shown > 0 {
        block.title_top(Line::from(format!(" past {} ", duration(shown as f64))).right_aligned())
    } else {
        block
    };
    let data: Vec<u64> = t.counts.iter().rev().take(shown).copied().collect();
    let max = data.iter().copied().max().unwrap_or(0).max(1);
    frame.render_widget(block, area);
    frame.render_widget(
        Sparkline::default()
            .data(data)
            .max(max)
            .direction(RenderDirection::RightToLeft)
            .style(theme.fg(Color::Cyan)),
        inner,
    );
}

fn status_line(model: &Model, theme: &Theme) -> Line<'static> {
    let error = theme.fg(Color::Red).patch(bold());
    match (model.poll_error(), model.notice()) {
        (Some(e), _) => Line::styled(format!("cannot reach the agent: {e} (retrying)"), error),
        (None, Some(Notice::Error(e))) => Line::styled(e.clone(), error),
        (None, Some(Notice::Info(i))) => Line::styled(i.clone(), theme.fg(Color::Green)),
        (None, None) => Line::default(),
    }
}

fn key_line(model: &Model, theme: &Theme) -> Line<'static> {
    let key = |k: &str| Span::styled(k.to_string(), Style::new().add_modifier(Modifier::REVERSED));
    match model.mode() {
        Mode::Normal => {
            let mut spans = Vec::new();
            for (k, what) in [
                ("q", "quit"),
                ("Tab", "switch"),
                ("↑↓", "select"),
                ("s", "sort"),
                ("/", "filter"),
                ("d", "drain"),
                ("u", "undrain"),
                ("K", "kill"),
                ("?", "help"),
            ] {
                spans.push(key(k));
                spans.push(Span::raw(format!(" {what} ")));
            }
            Line::from(spans)
        }
        Mode::Filter => {
            let pane = match model.focus() {
                Pane::Hosts => "hosts",
                Pane::Tasks => "tasks",
            };
            Line::from(vec![
                Span::styled(format!("filter {pane}: "), bold()),
                Span::raw(model.filter(model.focus()).to_string()),
                Span::styled("▏", Style::new().add_modifier(Modifier::SLOW_BLINK)),
                Span::raw("  "),
                key("Enter"),
                Span::raw(" keep "),
                key("Esc"),
                Span::raw(" clear"),
            ])
        }
        Mode::ConfirmKill { id, command } => Line::from(vec![
            Span::styled(
                format!("kill task {id} ({})? ", fit(command, 40)),
                theme.fg(Color::Yellow).patch(bold()),
            ),
            key("y"),
            Span::raw(" kill, any other key cancels"),
        ]),
        Mode::Help => Line::raw("any key closes the help"),
    }
}

const HELP: &[(&str, &str)] = &[
    ("q Esc", "quit (Ctrl-C too)"),
    ("Tab", "switch between the host and task lists"),
    ("↑ ↓ j k", "select (PgUp PgDn Home End g G)"),
    ("s  S", "sort by the next column / reverse the order"),
    ("/", "filter the list (Enter keeps it, Esc clears it)"),
    ("d  u", "drain / undrain the selected host"),
    ("K", "kill the selected task (asks first)"),
    ("r", "refresh now"),
    ("", ""),
    ("STATE", "alive · held: takes no new work now (owner busy"),
    ("", "  or memory short) · drained (herd drain) ·"),
    ("", "  suspect · dead · left"),
    ("LOAD", "▒ owner's cores · █ herd's · · idle granted"),
    ("MEMORY", "free / granted to herd · * the local node"),
    ("HIT", "cache hit rate, last 10 s (else since start)"),
];

fn help(frame: &mut Frame, area: Rect, theme: &Theme) {
    let w = 64.min(area.width);
    let h = (HELP.len() as u16 + 2).min(area.height);
    let popup = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    let lines: Vec<Line> = HELP
        .iter()
        .map(|(k, what)| {
            Line::from(vec![
                Span::styled(format!("{k:<9}"), bold()),
                Span::raw(what.to_string()),
            ])
        })
        .collect();
    frame.render_widget(Clear, popup);
    frame.render_widget(
        Paragraph::new(lines).block(
            Block::new()
                .borders(Borders::ALL)
                .border_style(theme.fg(Color::Cyan))
                .title(Span::styled(" herd top: keys ", bold())),
        ),
        popup,
    );
}

/// `s` cut to `width` characters, with an ellipsis when cut.
fn fit(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_string()
    } else {
        let mut out: String = s.chars().take(width.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

/// Bytes in at most 4 characters: `512M`, `7.8G`.
fn short_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "K", "M", "G", "T"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1000.0 && i < UNITS.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else if v < 10.0 {
        format!("{v:.1}{}", UNITS[i])
    } else {
        format!("{v:.0}{}", UNITS[i])
    }
}

/// A duration in at most 6 characters: `45s`, `3m05s`, `1h02m`, `2d03h`.
fn duration(secs: f64) -> String {
    let s = secs.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// The buffer as text: one line per row, trailing blanks cut, no styles.
pub fn buffer_text(buf: &Buffer) -> String {
    let width = buf.area.width as usize;
    let mut out = String::new();
    for row in buf.content().chunks(width.max(1)) {
        let mut line = String::new();
        let mut skip = 0;
        for cell in row {
            if skip > 0 {
                skip -= 1;
                continue;
            }
            let sym = cell.symbol();
            line.push_str(sym);
            skip = Span::raw(sym).width().saturating_sub(1);
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::model::Key;
    use super::super::model::tests::{node, sample};
    use super::*;
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;

    const LIVE: Look = Look {
        interactive: true,
        color: true,
    };

    fn render(model: &mut Model, w: u16, h: u16, look: Look) -> String {
        let mut term = Terminal::new(TestBackend::new(w, h)).unwrap();
        term.draw(|f| draw(f, model, look)).unwrap();
        buffer_text(term.backend().buffer())
    }

    fn model() -> Model {
        let mut m = Model::new();
        m.observe(sample(), 0.0);
        let mut s = sample();
        s.tasks.remove(0);
        m.observe(s, 1.0);
        m.observe(sample(), 2.0);
        m
    }

    #[test]
    fn fits_80x24() {
        let mut m = model();
        let text = render(&mut m, 80, 24, LIVE);
        println!("{text}");
        for s in [
            "herd top",
            "cluster lab · node ws",
            "3/3 alive",
            "Hosts",
            "h1",
            "h2",
            "ws*",
            "alive",
            "Tasks",
            "gcc -c alpha.c",
            "gzip -k big.txt",
            "queued",
            "1m15s",
            "Throughput",
            "q quit",
            "? help",
        ] {
            assert!(text.contains(s), "{s:?} missing from\n{text}");
        }
        for glyph in [OWNER, HERD, IDLE] {
            assert!(text.contains(glyph), "{glyph:?} missing from\n{text}");
        }
        assert_eq!(text.lines().count(), 24);
        assert!(text.lines().all(|l| l.chars().count() <= 80));
        // The key line fits whole.
        assert!(text.lines().last().unwrap().contains("? help"));
    }

    #[test]
    fn fits_200x50_with_more_columns() {
        let mut m = model();
        let text = render(&mut m, 200, 50, LIVE);
        println!("{text}");
        for s in [
            "ADDRESS",
            "10.0.0.1:7420",
            "LOST",
            "UID",
            "xz -9 zeta.tar",
            "past",
        ] {
            assert!(text.contains(s), "{s:?} missing from\n{text}");
        }
    }

    #[test]
    fn any_size_without_panic() {
        let mut m = model();
        for (w, h) in [
            (1, 1),
            (10, 3),
            (39, 11),
            (40, 12),
            (80, 24),
            (81, 25),
            (300, 100),
        ] {
            render(&mut m, w, h, LIVE);
            m.key(Key::Char('?'));
            render(&mut m, w, h, LIVE);
            m.key(Key::Esc);
        }
        assert!(render(&mut m, 30, 8, LIVE).contains("needs at least"));
        // No data yet: still draws.
        let text = render(&mut Model::new(), 80, 24, LIVE);
        assert!(text.contains("waiting for the agent"), "{text}");
    }

    #[test]
    fn many_hosts_and_tasks_scroll_to_the_selection() {
        let mut s = sample();
        s.nodes = (0..40)
            .map(|i| node(&format!("n{i:02}"), 2.0, 1.0, 0.5))
            .collect();
        s.tasks = (0..40)
            .map(|i| super::super::model::tests::task(i, &format!("job-{i}"), Some("n01"), 1.0))
            .collect();
        let mut m = Model::new();
        m.observe(s, 0.0);
        let text = render(&mut m, 80, 24, LIVE);
        assert!(text.contains("n00") && !text.contains("n39"));
        m.key(Key::End);
        let text = render(&mut m, 80, 24, LIVE);
        assert!(text.contains("n39") && !text.contains("n00"), "{text}");
        m.key(Key::Tab);
        m.key(Key::PageDown);
        let text = render(&mut m, 80, 24, LIVE);
        assert!(text.contains("job-6"), "{text}");
        assert!(!text.contains("job-0 "), "{text}");
    }

    #[test]
    fn modes_show_in_the_key_line_and_help() {
        let mut m = model();
        m.key(Key::Tab);
        m.key(Key::Char('K'));
        let text = render(&mut m, 80, 24, LIVE);
        assert!(text.contains("kill task 1 (gcc -c alpha.c)?"), "{text}");
        m.key(Key::Char('n'));
        m.key(Key::Char('/'));
        m.key(Key::Char('g'));
        m.key(Key::Char('z'));
        let text = render(&mut m, 80, 24, LIVE);
        assert!(text.contains("filter tasks: gz"), "{text}");
        assert!(text.contains("filter \"gz\""), "{text}");
        assert!(!text.contains("alpha"), "{text}");
        m.key(Key::Enter);
        m.key(Key::Char('?'));
        let text = render(&mut m, 80, 24, LIVE);
        println!("{text}");
        assert!(text.contains("herd top: keys") && text.contains("drain / undrain"));
        m.key(Key::Char('x'));
        m.done(
            &super::super::model::Action::Kill(12),
            Err("no task 12".into()),
        );
        let text = render(&mut m, 80, 24, LIVE);
        assert!(text.contains("cannot kill 12: no task 12"), "{text}");
        let long = "task 1 runs on this machine in its herd run process, or is already ending: signal that process instead";
        m.done(&super::super::model::Action::Kill(1), Err(long.into()));
        let text = render(&mut m, 80, 24, LIVE);
        assert!(
            text.contains("signal that process instead"),
            "wrapped, whole: {text}"
        );
        assert_eq!(text.lines().count(), 24);
        assert!(text.lines().last().unwrap().contains("q quit"), "{text}");
        m.poll_failed("no herd agent is running".into());
        let text = render(&mut m, 80, 24, LIVE);
        assert!(text.contains("stale"), "{text}");
        assert!(
            text.contains("cannot reach the agent: no herd agent is running"),
            "{text}"
        );
    }

    #[test]
    fn once_shows_everything_without_keys() {
        let mut m = Model::new();
        m.observe(sample(), 0.0);
        let look = Look {
            interactive: false,
            color: false,
        };
        let h = once_height(&m);
        let text = render(&mut m, 100, h, look);
        assert!(text.contains("xz -9 zeta.tar") && text.contains("h2"));
        assert!(text.contains("needs two snapshots"));
        assert!(!text.contains("q quit"));
    }

    #[test]
    fn bar_splits_owner_and_herd() {
        assert_eq!(bar_cells(4.0, 1.0, 2.0, 8), (2, 4));
        assert_eq!(bar_cells(4.0, 0.0, 0.0, 8), (0, 0));
        // Load above the grant fills the bar, in proportion.
        assert_eq!(bar_cells(2.0, 3.0, 1.0, 8), (6, 2));
        // A little load still shows.
        assert_eq!(bar_cells(64.0, 0.1, 0.1, 8), (1, 1));
        assert_eq!(bar_cells(0.0, 0.0, 0.0, 8), (0, 0));
        let text: String = bar(4.0, 1.0, 2.0, 8, &Theme { color: false })
            .iter()
            .map(|s| s.content.to_string())
            .collect();
        assert_eq!(text, "▒▒████··");
    }

    #[test]
    fn formats() {
        assert_eq!(duration(5.2), "5s");
        assert_eq!(duration(75.0), "1m15s");
        assert_eq!(duration(3725.0), "1h02m");
        assert_eq!(duration(2.0 * 86400.0 + 7200.0), "2d02h");
        assert_eq!(short_bytes(3 << 30), "3.0G");
        assert_eq!(short_bytes(512 << 20), "512M");
        assert_eq!(short_bytes(1000 << 20), "1.0G");
        assert_eq!(fit("abcdef", 4), "abc…");
        assert_eq!(fit("abc", 4), "abc");
    }
}
