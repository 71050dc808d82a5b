//! The log lines' tests: escaping, and postscreen's wording.

use super::*;

#[test]
fn endpoints_and_escapes() {
    assert_eq!(
        Endpoint("192.0.2.7:25".parse().unwrap()).to_string(),
        "[192.0.2.7]:25"
    );
    assert_eq!(
        Endpoint("[2001:db8::1]:25".parse().unwrap()).to_string(),
        "[2001:db8::1]:25"
    );
    assert_eq!(escape(b"EHLO ylmf-pc\r\n", 100), "EHLO ylmf-pc\\r\\n");
    assert_eq!(escape(b"a\x00\xff\\", 100), "a\\000\\377\\\\");
    assert_eq!(escape(b"abcdef", 3), "abc");
    assert_eq!(seconds(std::time::Duration::from_millis(80)), "0.08");
    assert_eq!(seconds(std::time::Duration::from_millis(500)), "0.5");
    assert_eq!(seconds(std::time::Duration::from_secs(16)), "16");
}
