//! herd-sandbox's one public pure decoder, `herd_sandbox::unescape_mountinfo` (octal
//! escapes of `/proc/self/mountinfo` fields, which carry paths a workstation's files
//! and a task's names end up in), checked against a reference implementation. The
//! crate's private decoders (the wire spec, the status lines, the clamping of limits)
//! are driven by `sandbox_wire`, through `herd_sandbox::fuzzing`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fn reference(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let oct = |c: u8| (b'0'..=b'7').contains(&c);
        if b[i] == b'\\' && i + 3 < b.len() && oct(b[i + 1]) && oct(b[i + 2]) && oct(b[i + 3]) {
            let v = (b[i + 1] - b'0') as u32 * 64 + (b[i + 2] - b'0') as u32 * 8 + (b[i + 3] - b'0') as u32;
            // Above \377 there is no byte: the text stays as written.
            if v <= 255 {
                out.push(v as u8);
                i += 4;
                continue;
            }
            out.push(b[i]);
            i += 1;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let got = herd_sandbox::unescape_mountinfo(&s);
    assert_eq!(got, reference(&s));
    if !s.contains('\\') {
        assert_eq!(got, s);
    }
});
