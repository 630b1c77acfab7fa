//! Bounds on what a service says back: an error message, however much a
//! validator or a peer explains, is cut to [`MAX_MESSAGE_BYTES`] with a
//! marker, so no stored or returned error grows with its input.
//!
//! ```
//! use ucanto::bounded::{cut, MAX_MESSAGE_BYTES};
//! let long = "é".repeat(4_000);
//! let short = cut(long, MAX_MESSAGE_BYTES);
//! assert!(short.len() <= MAX_MESSAGE_BYTES);
//! assert!(short.ends_with(" bytes cut]"));
//! assert_eq!(cut("short".into(), MAX_MESSAGE_BYTES), "short");
//! ```

/// Longest error message, in bytes (UTF-8), a service stores or returns.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// `message`, or when it is longer than `max` bytes, its start (cut at a
/// character boundary) followed by `… [N bytes cut]`, at most `max` bytes
/// in all (`max` must leave room for the marker, about 20 bytes).
pub fn cut(message: String, max: usize) -> String {
    if message.len() <= max {
        return message;
    }
    let marker = |n: usize| format!("… [{n} bytes cut]");
    // The marker's length depends on how much is cut: take the widest.
    let room = max.saturating_sub(marker(message.len()).len());
    let mut end = room.min(message.len());
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = String::with_capacity(max);
    out.push_str(&message[..end]);
    out.push_str(&marker(message.len() - end));
    out
}

/// [`cut`] to [`MAX_MESSAGE_BYTES`].
pub fn message(message: String) -> String {
    cut(message, MAX_MESSAGE_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_at_a_character_boundary_within_the_bound() {
        for max in [32, 33, 64, 100, 1024] {
            for text in ["a".repeat(5000), "ü".repeat(3000), "🚚".repeat(1500)] {
                let out = cut(text.clone(), max);
                {
                    assert!(out.len() <= max, "{max}: {}", out.len());
                    let kept = out.split("… [").next().unwrap();
                    assert!(text.starts_with(kept));
                    let cut_n: usize = out
                        .rsplit("… [")
                        .next()
                        .unwrap()
                        .trim_end_matches(" bytes cut]")
                        .parse()
                        .unwrap();
                    assert_eq!(kept.len() + cut_n, text.len());
                }
            }
        }
        assert_eq!(cut("x".repeat(1024), 1024), "x".repeat(1024));
    }
}
