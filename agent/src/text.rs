//! Bounding text that baton passes on: Event notes (the API refuses one over its limit, and the
//! Event is lost), and reasons written by someone else (an annotation, the pause ConfigMap) that
//! baton repeats in Events, Node annotations and logs; and errors with their causes on one line.

use std::borrow::Cow;

/// The longest Event note the API server accepts: events.k8s.io/v1 `note`, counted in bytes
/// (Kubernetes' `NoteLengthLimit`).
pub const EVENT_NOTE_MAX: usize = 1024;
/// The most of a reason written by someone else that baton repeats: a sentence, which leaves
/// room in an Event note for baton's own words.
pub const REASON_MAX: usize = 256;
/// What marks a cut.
const CUT: &str = "…";

/// `s` in at most `max` bytes: whole when it fits, else its start, cut on a character boundary
/// and marked with `…`.
pub fn truncate(s: &str, max: usize) -> Cow<'_, str> {
    if s.len() <= max {
        return Cow::Borrowed(s);
    }
    let (budget, mark) = match max.checked_sub(CUT.len()) {
        Some(b) => (b, CUT),
        None => (max, ""),
    };
    let end = (0..=budget)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0);
    Cow::Owned(format!("{}{mark}", &s[..end]))
}

/// An error and its causes, on one line: `outer: inner: root`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        next = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_whole() {
        assert!(matches!(
            truncate("kernel 6.12", 64),
            Cow::Borrowed("kernel 6.12")
        ));
        assert_eq!(truncate(&"a".repeat(64), 64).len(), 64);
    }

    #[test]
    fn long_text_keeps_its_start_and_marks_the_cut() {
        let long = format!("kernel update{}", "x".repeat(4000));
        let cut = truncate(&long, EVENT_NOTE_MAX);
        assert_eq!(cut.len(), EVENT_NOTE_MAX);
        assert!(
            cut.starts_with("kernel update") && cut.ends_with(CUT),
            "{cut}"
        );
    }

    #[test]
    fn cuts_fall_on_character_boundaries() {
        for text in [
            "ä".repeat(700),
            "😀".repeat(300),
            format!("a{}", "€".repeat(500)),
        ] {
            for max in [0, 1, 2, 3, 4, 5, 10, 1023, 1024] {
                let cut = truncate(&text, max);
                assert!(cut.len() <= max, "{max}: {} bytes", cut.len());
                assert!(text.starts_with(cut.trim_end_matches(CUT)), "{max}");
                assert!(max < CUT.len() + 4 || cut.ends_with(CUT), "{max}: {cut}");
            }
        }
    }

    #[test]
    fn an_error_chain_is_one_line_outermost_first() {
        #[derive(Debug, thiserror::Error)]
        #[error("posting")]
        struct Outer(#[source] std::io::Error);
        assert_eq!(
            error_chain(&Outer(std::io::Error::other("refused"))),
            "posting: refused"
        );
    }
}
