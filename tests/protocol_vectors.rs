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

/// The fenced block ```` ```text <label> ```` of `doc`, without its fences.
fn block<'d>(doc: &'d str, label: &str) -> &'d str {
    let open = format!("```text {label}\n");
    let start = doc
        .find(&open)
        .unwrap_or_else(|| panic!("docs/protocol.md has no block {label}"))
        + open.len();
    let len = doc[start..]
        .find("\n```")
        .unwrap_or_else(|| panic!("block {label} is not closed"));
    &doc[start..start + len]
}

/// The SigV4 vectors of docs/protocol.md section 3.1: each request, as documented,
/// reproduces the documented canonical request, string to sign and signature, and
/// coffer's verifier accepts it; one changed byte of it is refused.
#[test]
fn signature_vectors_match() {
    use coffer::sigv4::{self, Authorization, PathForm, Request};
    let doc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/protocol.md")).unwrap();
    let secret = "wJ8cd1Ql0CfAPZaD3v7vVcR5zq_9i2Nx0aAb7tEm";
    let mut checked = 0;
    for n in 1.. {
        if !doc.contains(&format!("```text vector-{n}-request\n")) {
            break;
        }
        let raw = block(&doc, &format!("vector-{n}-request"));
        let (head, body) = raw.split_once("\n\n").unwrap_or((raw, ""));
        let mut lines = head.lines();
        let request_line = lines.next().unwrap();
        let mut parts = request_line.split(' ');
        let (method, target) = (parts.next().unwrap(), parts.next().unwrap());
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let mut headers: Vec<(String, String)> = Vec::new();
        let mut authorization = None;
        for line in lines {
            let (name, value) = line
                .split_once(": ")
                .unwrap_or_else(|| panic!("vector {n}: bad header {line:?}"));
            if name.eq_ignore_ascii_case("authorization") {
                authorization = Some(value.to_owned());
            } else {
                headers.push((name.to_owned(), value.to_owned()));
            }
        }
        let auth = Authorization::parse(&authorization.unwrap()).unwrap();
        let req = Request {
            method,
            path,
            query,
            headers: headers.iter().map(|(n, v)| (n.as_str(), v.as_bytes())).collect(),
        };
        let declared = headers
            .iter()
            .find(|(h, _)| h.eq_ignore_ascii_case("x-amz-content-sha256"))
            .map(|(_, v)| v.clone());
        let payload = sigv4::sha256_hex(body.as_bytes());
        if let Some(d) = &declared {
            assert_eq!(d, &payload, "vector {n}: x-amz-content-sha256 is the body's hash");
        }
        let content_length = headers.iter().find(|(h, _)| h.eq_ignore_ascii_case("content-length"));
        if let Some((_, len)) = content_length {
            assert_eq!(len.parse::<usize>().unwrap(), body.len(), "vector {n}: Content-Length");
        }
        let amz_date = &headers
            .iter()
            .find(|(h, _)| h.eq_ignore_ascii_case("x-amz-date"))
            .unwrap()
            .1;
        let canonical = sigv4::canonical_request(&req, &auth.signed_headers, &payload, PathForm::Normalized).unwrap();
        assert_eq!(
            String::from_utf8(canonical.clone()).unwrap(),
            block(&doc, &format!("vector-{n}-canonical-request")),
            "vector {n}: canonical request"
        );
        let sts = sigv4::string_to_sign(amz_date, &auth.scope(), &canonical);
        assert_eq!(
            sts,
            block(&doc, &format!("vector-{n}-string-to-sign")),
            "vector {n}: string to sign"
        );
        let key = sigv4::signing_key(secret, &auth.date, &auth.region, &auth.service);
        let signature = sigv4::hex(&sigv4::signature(&key, &sts));
        assert_eq!(signature, sigv4::hex(&auth.signature), "vector {n}: signature");
        assert!(
            doc.contains(&format!("Signature: `{signature}`")),
            "vector {n}: the documented signature"
        );
        assert_eq!((auth.region.as_str(), auth.service.as_str()), ("local", "coffer"));
        sigv4::verify(&req, &auth, amz_date, &payload, &key).unwrap();
        // One byte of the body changed: refused.
        let other = sigv4::sha256_hex(format!("{body}x").as_bytes());
        assert!(
            sigv4::verify(&req, &auth, amz_date, &other, &key).is_err(),
            "vector {n}"
        );
        checked += 1;
    }
    assert!(
        checked >= 3,
        "docs/protocol.md must keep at least three signature vectors"
    );
}
