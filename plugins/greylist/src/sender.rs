//! Sender addresses as postgrey keys them: lowercased, with BATV and SRS
//! forms taken back to the original address, a `+extension` dropped, and
//! the numbers of VERP-style local parts as `#`, so one sender's messages
//! share one triplet.

/// The longest address a key holds (RFC 5321's path limit).
pub const MAX_ADDRESS: usize = 256;

/// `address` as a greylisting key part, at most [`MAX_ADDRESS`] bytes.
pub fn normalize(address: &str) -> String {
    let address = address.trim().to_ascii_lowercase();
    let (local, domain) = match address.rsplit_once('@') {
        Some((local, domain)) => (local.to_string(), domain.to_string()),
        None => (address.clone(), String::new()),
    };
    let (local, domain) = unwrap_srs(&local).unwrap_or((local, domain));
    let local = strip_batv(&local);
    let local = local.split('+').next().unwrap_or_default();
    let local = numbers_as_hash(local);
    let mut key = if domain.is_empty() {
        local
    } else {
        format!("{local}@{domain}")
    };
    if key.len() > MAX_ADDRESS {
        let mut end = MAX_ADDRESS;
        while !key.is_char_boundary(end) {
            end -= 1;
        }
        key.truncate(end);
    }
    key
}

/// `prvs=1234abcdef=user` (and `msprvs1=...`, `btv1==...==user`) as `user`.
fn strip_batv(local: &str) -> &str {
    for prefix in ["prvs=", "msprvs1="] {
        if let Some(rest) = local.strip_prefix(prefix) {
            if let Some((_, user)) = rest.split_once('=') {
                return user;
            }
        }
    }
    if let Some(rest) = local.strip_prefix("btv1==") {
        if let Some((_, user)) = rest.split_once("==") {
            return user;
        }
    }
    local
}

/// `SRS0=hash=tt=domain=user@forwarder` as `user` and `domain`;
/// `SRS1=hash=forwarder==hash=tt=domain=user@...` likewise.
fn unwrap_srs(local: &str) -> Option<(String, String)> {
    let rest = local
        .strip_prefix("srs0=")
        .or_else(|| local.strip_prefix("srs0+"))
        .or_else(|| local.strip_prefix("srs0-"))
        .or_else(|| {
            let srs1 = local
                .strip_prefix("srs1=")
                .or_else(|| local.strip_prefix("srs1+"))?;
            srs1.split_once("==").map(|(_, inner)| inner)
        })?;
    let mut fields = rest.splitn(4, '=');
    let (_hash, _timestamp, domain, user) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    (!domain.is_empty() && !user.is_empty()).then(|| (user.to_string(), domain.to_string()))
}

/// Every run of digits standing alone between non-alphanumerics as `#`
/// (VERP bounce addresses: `list-bounce-123-456` is `list-bounce-#-#`).
fn numbers_as_hash(local: &str) -> String {
    let mut out = String::with_capacity(local.len());
    let bytes = local.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index].is_ascii_digit()
            && (index == 0 || !bytes[index - 1].is_ascii_alphanumeric())
        {
            let end = bytes[index..]
                .iter()
                .position(|b| !b.is_ascii_digit())
                .map_or(bytes.len(), |n| index + n);
            if end == bytes.len() || !bytes[end].is_ascii_alphanumeric() {
                out.push('#');
                index = end;
                continue;
            }
        }
        out.push(char::from(bytes[index]));
        index += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgrey_forms() {
        assert_eq!(normalize("Alice@Example.ORG"), "alice@example.org");
        assert_eq!(
            normalize("prvs=1234abcdef=alice@example.org"),
            "alice@example.org"
        );
        assert_eq!(
            normalize("msprvs1=19253abcd=alice@example.org"),
            "alice@example.org"
        );
        assert_eq!(
            normalize("SRS0=HHH=TT=example.org=alice@forwarder.example"),
            "alice@example.org"
        );
        assert_eq!(
            normalize("SRS1=HHH=forwarder.example==HHH=TT=example.org=alice@other.example"),
            "alice@example.org"
        );
        assert_eq!(normalize("alice+news@example.org"), "alice@example.org");
        assert_eq!(
            normalize("list-bounces-1234-5678@example.org"),
            "list-bounces-#-#@example.org"
        );
        assert_eq!(normalize("user42@example.org"), "user42@example.org");
        assert_eq!(normalize(""), "");
    }

    #[test]
    fn keys_stay_bounded() {
        let long = format!("{}@example.org", "a".repeat(5000));
        assert_eq!(normalize(&long).len(), MAX_ADDRESS);
        let odd = "\"quoted local\\\"part\"@example.org";
        assert!(normalize(odd).len() <= MAX_ADDRESS);
        let wide = format!("{}@example.org", "é".repeat(300));
        assert!(normalize(&wide).len() <= MAX_ADDRESS);
    }
}
