//! `herd-testbed-probe`: a tiny, dependency-free tool the testbed's own tests (and
//! anyone debugging a testbed) run on hosts: TCP listen/connect/send, file checks, CPU
//! burning, process trees. Being a dynamically linked Rust binary, it is also the test
//! subject for minimal roots (binary + shared libraries only).
//!
//! Every command prints `key=value` lines on stdout and exits 0 on success, 1 on a
//! negative answer (e.g. could not connect, path missing), 2 on usage errors.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::Path;
use std::process::{Command, ExitCode, Stdio};
use std::thread;
use std::time::{Duration, Instant};

const USAGE: &str = "\
usage: herd-testbed-probe COMMAND [ARGS]
  listen PORT                 accept connections forever; reply `received=N` after EOF
  connect HOST:PORT [MS]      try to connect within MS milliseconds (default 1000)
  send HOST:PORT BYTES        send BYTES, wait for the reply, print `seconds=S`
  resolve NAME                print the addresses NAME resolves to
  exists PATH                 exit 0 if PATH exists, 1 if not
  ls DIR                      list DIR
  write FILE TEXT             write TEXT to FILE
  mount-tmpfs DIR             mount a tmpfs on DIR
  cat FILE                    print FILE
  hostname                    print the hostname
  burn SECONDS [THREADS]      spin for SECONDS of wall time, print `cpu_seconds=C`
  tree DEPTH                  start a chain of DEPTH descendants (plus a sleeper each), sleep
  sleep [SECONDS]             sleep (default: forever)
  testbed-crash BINARY        build a testbed with two busy hosts, print `id=ID`, sleep
  testbed-new                 try to build an empty testbed, print `id=ID` or `error=...`";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match run(&args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("herd-testbed-probe: {e}");
            ExitCode::from(1)
        }
    }
}

fn usage() -> io::Result<ExitCode> {
    eprintln!("{USAGE}");
    Ok(ExitCode::from(2))
}

fn run(args: &[&str]) -> io::Result<ExitCode> {
    match args {
        ["listen", port] => listen(port),
        ["connect", addr] => connect(addr, 1000),
        ["connect", addr, ms] => connect(addr, ms.parse().map_err(invalid)?),
        ["send", addr, bytes] => send(addr, bytes.parse().map_err(invalid)?),
        ["resolve", name] => {
            let addrs: Vec<SocketAddr> = (*name, 0).to_socket_addrs()?.collect();
            for a in addrs {
                println!("addr={}", a.ip());
            }
            Ok(ExitCode::SUCCESS)
        }
        ["exists", path] => Ok(if Path::new(path).exists() {
            println!("exists=yes");
            ExitCode::SUCCESS
        } else {
            println!("exists=no");
            ExitCode::from(1)
        }),
        ["ls", dir] => {
            let mut names: Vec<String> = std::fs::read_dir(dir)?
                .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect::<io::Result<_>>()?;
            names.sort();
            for name in names {
                println!("{name}");
            }
            Ok(ExitCode::SUCCESS)
        }
        ["write", file, text] => {
            std::fs::write(file, text)?;
            Ok(ExitCode::SUCCESS)
        }
        ["mount-tmpfs", dir] => {
            let dir = std::ffi::CString::new(*dir).map_err(invalid)?;
            // SAFETY: NUL-terminated strings and a NULL data pointer.
            let rc = unsafe {
                libc::mount(
                    c"tmpfs".as_ptr(),
                    dir.as_ptr(),
                    c"tmpfs".as_ptr(),
                    0,
                    std::ptr::null(),
                )
            };
            if rc != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(ExitCode::SUCCESS)
        }
        ["cat", file] => {
            io::stdout().write_all(&std::fs::read(file)?)?;
            Ok(ExitCode::SUCCESS)
        }
        ["hostname"] => {
            let mut buf = [0u8; 256];
            // SAFETY: gethostname writes at most buf.len() bytes into buf.
            if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
                return Err(io::Error::last_os_error());
            }
            let len = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
            println!("hostname={}", String::from_utf8_lossy(&buf[..len]));
            Ok(ExitCode::SUCCESS)
        }
        ["burn", secs] => burn(secs.parse().map_err(invalid)?, 1),
        ["burn", secs, threads] => burn(
            secs.parse().map_err(invalid)?,
            threads.parse().map_err(invalid)?,
        ),
        ["tree", depth] => tree(depth.parse().map_err(invalid)?),
        ["sleep"] => loop {
            thread::sleep(Duration::from_secs(3600));
        },
        ["sleep", secs] => {
            thread::sleep(Duration::from_secs_f64(secs.parse().map_err(invalid)?));
            Ok(ExitCode::SUCCESS)
        }
        ["testbed-crash", binary] => testbed_crash(binary),
        ["testbed-new"] => match herd_testbed::Testbed::new() {
            Ok(bed) => {
                println!("id={}", bed.id());
                Ok(ExitCode::SUCCESS)
            }
            Err(e) => {
                println!("error={e}");
                Ok(ExitCode::from(1))
            }
        },
        _ => usage(),
    }
}

fn invalid<E: std::fmt::Display>(e: E) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e.to_string())
}

fn listen(port: &str) -> io::Result<ExitCode> {
    let listener = TcpListener::bind(("0.0.0.0", port.parse::<u16>().map_err(invalid)?))?;
    println!("listening={}", listener.local_addr()?);
    io::stdout().flush()?;
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0u64;
            loop {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n as u64,
                }
            }
            let _ = writeln!(conn, "received={total}");
        });
    }
    Ok(ExitCode::SUCCESS)
}

fn resolve(addr: &str) -> io::Result<SocketAddr> {
    addr.to_socket_addrs()?.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!("{addr} resolves to nothing"),
        )
    })
}

fn connect(addr: &str, ms: u64) -> io::Result<ExitCode> {
    let target = resolve(addr)?;
    match TcpStream::connect_timeout(&target, Duration::from_millis(ms)) {
        Ok(_) => {
            println!("connected=yes");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("connected=no");
            println!("error={e}");
            Ok(ExitCode::from(1))
        }
    }
}

fn send(addr: &str, bytes: u64) -> io::Result<ExitCode> {
    let target = resolve(addr)?;
    let start = Instant::now();
    let mut conn = TcpStream::connect_timeout(&target, Duration::from_secs(5))?;
    let chunk = vec![0x5au8; 64 * 1024];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        conn.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    conn.shutdown(Shutdown::Write)?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply)?;
    let seconds = start.elapsed().as_secs_f64();
    print!("{reply}");
    println!("seconds={seconds:.3}");
    Ok(ExitCode::SUCCESS)
}

fn cpu_seconds() -> f64 {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the struct it is given.
    let usage = unsafe {
        libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr());
        usage.assume_init()
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

fn burn(secs: f64, threads: usize) -> io::Result<ExitCode> {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let workers: Vec<_> = (0..threads.max(1))
        .map(|_| {
            thread::spawn(move || {
                let mut x = 0u64;
                while Instant::now() < until {
                    for i in 0..10_000u64 {
                        x = x.wrapping_mul(31).wrapping_add(i);
                    }
                    std::hint::black_box(x);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    println!("cpu_seconds={:.3}", cpu_seconds());
    Ok(ExitCode::SUCCESS)
}

fn tree(depth: u32) -> io::Result<ExitCode> {
    println!("pid={}", std::process::id());
    io::stdout().flush()?;
    if depth > 0 {
        let me = std::env::current_exe()?;
        // Detached children: neither is waited for, so both outlive a killed parent.
        Command::new(&me)
            .args(["tree", &(depth - 1).to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
        Command::new(&me)
            .args(["sleep"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()?;
    }
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

fn testbed_crash(binary: &str) -> io::Result<ExitCode> {
    use herd_testbed::{HostSpec, Testbed};
    let mut bed = Testbed::new().map_err(io::Error::other)?;
    bed.add_host(HostSpec::real_fs("ws").cpu_quota(0.5).bandwidth_mbit(50))
        .map_err(io::Error::other)?;
    bed.add_host(HostSpec::minimal("helper", binary))
        .map_err(io::Error::other)?;
    let me = std::env::current_exe()?;
    let me = me.to_string_lossy();
    bed.host("ws")
        .command(&me, &["sleep"])
        .spawn()
        .map_err(io::Error::other)?;
    bed.host("helper")
        .command("herd", &["sleep"])
        .spawn()
        .map_err(io::Error::other)?;
    println!("id={}", bed.id());
    io::stdout().flush()?;
    // Never drops `bed`: the caller kills this process to simulate a crash.
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}
