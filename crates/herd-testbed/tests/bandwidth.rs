//! The link bandwidth limit applies in both directions of a host's link.

mod common;

use std::time::Duration;

use common::{PROBE, can_connect, eventually, listen, run, testbed, value};
use herd_testbed::{Host, HostSpec};

/// 6 MB at 20 Mbit/s takes 2.4 s; unlimited it takes milliseconds.
const BYTES: u64 = 6_000_000;
const MBIT: u32 = 20;

fn transfer(from: &Host, to: &Host, port: u16) -> f64 {
    let target = format!("{}:{port}", to.addr());
    assert!(
        eventually(Duration::from_secs(10), || can_connect(from, &target, 1000)),
        "{} cannot reach {target}",
        from.name()
    );
    let out = run(from, PROBE, &["send", &target, &BYTES.to_string()]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(value(&out, "received"), Some(BYTES.to_string()));
    value(&out, "seconds").unwrap().parse().unwrap()
}

#[test]
fn bandwidth_limit_slows_transfers_in_both_directions() {
    let mut bed = testbed();
    bed.add_host(HostSpec::real_fs("narrow").bandwidth_mbit(MBIT))
        .unwrap();
    bed.add_host(HostSpec::real_fs("wide")).unwrap();
    bed.add_host(HostSpec::real_fs("wide2")).unwrap();
    let (narrow, wide, wide2) = (bed.host("narrow"), bed.host("wide"), bed.host("wide2"));
    let mut servers = vec![listen(narrow, 7200), listen(wide, 7200)];

    let upload = transfer(narrow, wide, 7200);
    let download = transfer(wide, narrow, 7200);
    let unlimited = transfer(wide2, wide, 7200);
    eprintln!("upload {upload:.2}s, download {download:.2}s, unlimited {unlimited:.2}s");

    // Half the theoretical 2.4 s: clearly limited, without timing tightly.
    assert!(upload > 1.2, "narrow -> wide took only {upload}s");
    assert!(download > 1.2, "wide -> narrow took only {download}s");
    assert!(
        unlimited < upload && unlimited < download,
        "the unlimited link was not faster"
    );
    for server in &mut servers {
        server.kill().unwrap();
        server.wait().unwrap();
    }
}
