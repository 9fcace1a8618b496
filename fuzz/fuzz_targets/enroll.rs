//! The one request a node without a certificate may send: `PeerRequest::Enroll`, as the
//! CA node's `herd_agent::enroll::serve_enroll` checks it before touching its state:
//! the name (`herd_pki::check_name`), the CSR (`herd_pki::key_fingerprint_of_csr`),
//! then `Ca::sign_csr`, and what the joining node reads back from the certificate
//! (`peer_cert`, `key_fingerprint_of_cert`).
//!
//! The first byte picks the form: a whole framed `PeerRequest`, or the rest as the CSR's
//! DER directly (the name fixed), which reaches the DER parser sooner.
//!
//! Properties: never panics; a certificate signed from a CSR carries the CSR's key, the
//! name asked for and the cluster's name.
#![no_main]

use std::sync::OnceLock;

use herd_pki::{Ca, DEFAULT_CERT_LIFETIME, Validity};
use herd_proto::{PeerRequest, Role};
use libfuzzer_sys::fuzz_target;

fn ca() -> &'static Ca {
    static CA: OnceLock<Ca> = OnceLock::new();
    CA.get_or_init(|| {
        Ca::create("fuzz", "ca", &[Role::Submit, Role::Exec], validity())
            .unwrap()
            .0
    })
}

fn validity() -> Validity {
    Validity::new(1_700_000_000, DEFAULT_CERT_LIFETIME)
}

fn serve(name: &str, csr_der: &[u8]) {
    if herd_pki::check_name(name).is_err() {
        return;
    }
    let Ok(key) = herd_pki::key_fingerprint_of_csr(csr_der) else {
        return;
    };
    let Ok(cert) = ca().sign_csr(csr_der, name, &[Role::Exec], validity()) else {
        return;
    };
    let info = herd_pki::peer_cert(&cert).expect("a certificate we signed parses");
    assert_eq!(info.name, name);
    assert_eq!(info.cluster, "fuzz");
    assert_eq!(info.roles, vec![Role::Exec]);
    let got = herd_pki::key_fingerprint_of_cert(&cert).expect("its key parses");
    assert_eq!(got, key, "the signed certificate carries another key than the CSR");
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    if sel & 1 == 0 {
        let Ok(req) = herd_proto::decode::<PeerRequest>(rest) else {
            return;
        };
        if let PeerRequest::Enroll { name, csr_der, .. } = req {
            serve(&name, &csr_der);
        }
    } else {
        serve("h1", rest);
        // A peer's certificate as the agent reads it after the handshake.
        let _ = herd_pki::peer_cert(rest);
        let _ = herd_pki::key_fingerprint_of_cert(rest);
    }
});
