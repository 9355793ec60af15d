//! Known-answer vectors of docs/protocol.md, replayed against coffer's own code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

#[test]
fn spki_pin_vectors_match() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/pins.txt")).unwrap();
    let mut spki = None;
    let mut checked = 0;
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        match line.split_once(' ') {
            Some(("spki", h)) => spki = Some(hex(h)),
            Some(("pin", p)) => {
                assert_eq!(coffer::pki::spki_pin(spki.as_ref().unwrap()), p);
                checked += 1;
            }
            _ => panic!("bad vector line {line:?}"),
        }
    }
    assert!(checked > 0);
    // The documented vector is the one in the file.
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md")).unwrap();
    assert!(doc.contains("sha256/XNJS+wzokyQ2+vjM0QQJgbie5K1rn+niorfnGqyyfNM="));
}
