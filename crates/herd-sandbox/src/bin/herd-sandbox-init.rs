//! The sandbox init as a stand-alone program, for tests and for trying the sandbox by
//! hand: `herd-sandbox-init __sandbox-init SPEC_FD STATUS_FD` (started by
//! `herd_sandbox::spawn`). The herd binary does the same from its own `main()`.

fn main() {
    herd_sandbox::init_main()
}
