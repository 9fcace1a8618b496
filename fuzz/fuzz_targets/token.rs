//! The join token as `herd agent --join TOKEN` reads it: `herd_proto::Token::decode`
//! and `herd_agent::enroll::parse_token` (which adds the expiry check).
//!
//! The first byte picks the input's form: the raw string, or `herd1-` + base64 of the
//! rest (so the fuzzer reaches the postcard record directly).
//!
//! Properties: never panics; a token that parses re-encodes to a string that parses to
//! the same token, has a non-empty cluster name and a 16-digit hex id; `parse_token`
//! accepts only what `Token::decode` accepts.
#![no_main]

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use herd_proto::Token;
use libfuzzer_sys::fuzz_target;

fn check(s: &str) {
    let t = Token::decode(s);
    let p = herd_agent::enroll::parse_token(s);
    match &t {
        Ok(t) => {
            assert!(!t.cluster.is_empty());
            assert_eq!(t.id_hex().len(), 16);
            let again = Token::decode(&t.encode()).expect("an encoded token parses");
            assert_eq!(&again, t);
            if let Ok(p) = &p {
                assert_eq!(p, t);
            }
        }
        Err(_) => assert!(p.is_err(), "parse_token accepted what Token::decode refused"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    if sel & 1 == 0 {
        check(&String::from_utf8_lossy(rest));
    } else {
        check(&format!("herd1-{}", URL_SAFE_NO_PAD.encode(rest)));
    }
});
