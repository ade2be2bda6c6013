//! Checks on user input, shared by the CLI and the API.

use crate::error::{Error, Result};

/// Longest name (tag, album, library, device) in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// A non-empty name of at most [`MAX_NAME_BYTES`] without control characters.
pub fn name(what: &str, s: &str) -> Result<()> {
    if s.trim().is_empty() {
        return Err(Error::Invalid(format!("{what} must not be empty")));
    }
    if s.len() > MAX_NAME_BYTES {
        return Err(Error::Invalid(format!(
            "{what} is {} bytes long; the limit is {MAX_NAME_BYTES}",
            s.len()
        )));
    }
    if s.chars().any(char::is_control) {
        return Err(Error::Invalid(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(())
}

/// A colour `#rrggbb` (or `rrggbb`, any case); returns it normalised to `#rrggbb`.
pub fn color(s: &str) -> Result<String> {
    let hex = s.strip_prefix('#').unwrap_or(s);
    if hex.len() != 6 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(Error::Invalid(format!(
            "invalid color {s:?}: expected six hex digits like #ff8800"
        )));
    }
    Ok(format!("#{}", hex.to_ascii_lowercase()))
}

/// Note text on a file entry.
pub fn note(s: &str) -> Result<()> {
    if s.len() > crate::sync::entry::MAX_TEXT_BYTES {
        return Err(Error::Invalid(format!(
            "note is {} bytes long; the limit is {}",
            s.len(),
            crate::sync::entry::MAX_TEXT_BYTES
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(name("tag name", "holiday").is_ok());
        assert!(name("tag name", "").is_err());
        assert!(name("tag name", "   ").is_err());
        assert!(name("tag name", &"x".repeat(10 * 1024)).is_err());
        assert!(name("tag name", "a\nb").is_err());
    }

    #[test]
    fn colors() {
        assert_eq!(color("#FF8800").unwrap(), "#ff8800");
        assert_eq!(color("00aa11").unwrap(), "#00aa11");
        assert!(color("red").is_err());
        assert!(color("#12345").is_err());
        assert!(color("#12345g").is_err());
    }
}
