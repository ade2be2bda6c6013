//! Relay URLs as devices exchange them (tickets, pairing, presence, `Device`
//! rows): plain strings on the wire, bounded in number and length, parsed
//! into Iroh's [`RelayUrl`] only where a dial needs them. A relay only
//! forwards packets that stay end-to-end encrypted between the two devices;
//! a node uses relays only when started with `--relay URL`.

use iroh::RelayUrl;

/// Most relay URLs a device advertises (ticket, pairing, presence, rows).
pub const MAX_RELAYS: usize = 4;
/// Longest relay URL accepted.
pub const MAX_RELAY_URL: usize = 256;

/// Whether `url` is an acceptable relay URL: `http://` or `https://`,
/// short enough and parsable.
pub fn parse(url: &str) -> Result<RelayUrl, String> {
    if url.len() > MAX_RELAY_URL {
        return Err(format!("relay URL longer than {MAX_RELAY_URL} bytes"));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(format!(
            "relay URL {url:?} must start with http:// or https://"
        ));
    }
    url.parse::<RelayUrl>()
        .map_err(|e| format!("invalid relay URL {url:?}: {e}"))
}

/// The usable relay URLs of a list another device sent: at most
/// [`MAX_RELAYS`], the unusable ones skipped.
pub fn usable(list: &[String]) -> Vec<RelayUrl> {
    list.iter()
        .filter_map(|u| parse(u).ok())
        .take(MAX_RELAYS)
        .collect()
}

/// A list another device sent, as stored: only the usable URLs, in their
/// canonical string form.
pub fn sanitize(list: &[String]) -> Vec<String> {
    usable(list).iter().map(|u| u.to_string()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_http_urls_are_kept() {
        let list = vec![
            "http://10.0.0.1:3340".to_string(),
            "ftp://x".into(),
            format!("https://{}.example", "a".repeat(300)),
            "not a url".into(),
        ];
        assert_eq!(usable(&list).len(), 1);
        assert!(parse("https://relay.example").is_ok());
        let many: Vec<String> = (0..10).map(|i| format!("http://10.0.0.{i}:1")).collect();
        assert_eq!(sanitize(&many).len(), MAX_RELAYS);
    }
}
