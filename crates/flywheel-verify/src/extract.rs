//! Finding the final answer a completion commits to.
//!
//! Each [`Format`] names one way models mark their answer. Every finder returns the *last* match in
//! the text, because models reason first and conclude last, and because a model that corrects itself
//! ("the answer is 5... wait, the answer is 6") means its final word. [`Format::Auto`] looks for every
//! explicit marker (boxed, `####`, "the answer is", an `Answer:` line) and keeps the one that starts
//! last in the text; it never guesses from bare numbers. [`Format::LastNumber`] is the only format
//! that does, and it is only used when asked for (or as the verifier's opt-in fallback).
//!
//! All finders work on byte offsets of ASCII markers, so they never split a UTF-8 character and never
//! allocate.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// How a completion marks its final answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Every explicit marker below except `last-number`; the one starting last in the text wins.
    #[default]
    Auto,
    /// GSM8K's `#### 1,234`: the rest of the line after the last `####`.
    Gsm8k,
    /// LaTeX `\boxed{...}` or `\fbox{...}` with nested braces; the last one.
    Boxed,
    /// "The answer is X", "the final answer is: X": up to the end of that sentence or line.
    AnswerIs,
    /// A line starting `A:`, `Answer:` or `Final answer:`: the rest of the last such line.
    FinalLine,
    /// The last number in the text (digits with separators, a decimal point, a fraction slash).
    LastNumber,
}

impl Format {
    /// Every format, in the order `auto` tries and documents them.
    pub const ALL: [Format; 6] =
        [Format::Auto, Format::Gsm8k, Format::Boxed, Format::AnswerIs, Format::FinalLine, Format::LastNumber];

    /// The format's name in configs and on the command line.
    pub const fn name(self) -> &'static str {
        match self {
            Format::Auto => "auto",
            Format::Gsm8k => "gsm8k",
            Format::Boxed => "boxed",
            Format::AnswerIs => "answer-is",
            Format::FinalLine => "final-line",
            Format::LastNumber => "last-number",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A format name that is none of [`Format::ALL`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseFormatError(pub String);

impl fmt::Display for ParseFormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = Format::ALL.iter().map(|f| f.name()).collect();
        write!(f, "unknown answer format {:?} (expected one of: {})", self.0, names.join(", "))
    }
}

impl std::error::Error for ParseFormatError {}

impl FromStr for Format {
    type Err = ParseFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL.into_iter().find(|f| f.name() == s).ok_or_else(|| ParseFormatError(s.to_owned()))
    }
}

/// The final answer span of `text` in `format`, trimmed; `None` when there is none or it is empty.
pub fn extract(text: &str, format: Format) -> Option<&str> {
    let found = match format {
        Format::Auto => [find_boxed(text), find_gsm8k(text), find_answer_is(text), find_final_line(text)]
            .into_iter()
            .flatten()
            .max_by_key(|m| m.start),
        Format::Gsm8k => find_gsm8k(text),
        Format::Boxed => find_boxed(text),
        Format::AnswerIs => find_answer_is(text),
        Format::FinalLine => find_final_line(text),
        Format::LastNumber => find_last_number(text),
    }?;
    let span = found.span.trim();
    (!span.is_empty()).then_some(span)
}

/// A marker found in the text: where it starts, and the answer span it introduces.
#[derive(Debug, Clone, Copy)]
struct Found<'a> {
    start: usize,
    span: &'a str,
}

fn find_gsm8k(text: &str) -> Option<Found<'_>> {
    let start = text.rfind("####")?;
    let rest = text[start..].trim_start_matches('#');
    Some(Found { start, span: first_line(rest) })
}

fn find_boxed(text: &str) -> Option<Found<'_>> {
    let (start, open) = [r"\boxed{", r"\fbox{"]
        .into_iter()
        .filter_map(|m| text.rfind(m).map(|at| (at, at + m.len())))
        .max_by_key(|&(at, _)| at)?;
    let mut depth = 1usize;
    for (i, b) in text.as_bytes()[open..].iter().enumerate() {
        match b {
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(Found { start, span: &text[open..open + i] });
                }
            }
            _ => {}
        }
    }
    // An unclosed box is a truncated completion: it commits to nothing.
    Some(Found { start, span: "" })
}

fn find_answer_is(text: &str) -> Option<Found<'_>> {
    let bytes = text.as_bytes();
    let needle = b"answer is";
    let mut end = bytes.len();
    let start = loop {
        let at = rfind_ignore_case(&bytes[..end], needle)?;
        let boundary = at == 0 || !bytes[at - 1].is_ascii_alphanumeric();
        if boundary {
            break at;
        }
        end = at + needle.len() - 1;
    };
    let rest = text[start + needle.len()..].trim_start_matches(|c: char| c == ':' || c.is_whitespace());
    Some(Found { start, span: sentence(rest) })
}

fn find_final_line(text: &str) -> Option<Found<'_>> {
    let mut end = text.len();
    loop {
        let line_start = text[..end].rfind('\n').map_or(0, |i| i + 1);
        let line = &text[line_start..end];
        let body = line.trim_start_matches(|c: char| c.is_whitespace() || matches!(c, '*' | '#' | '>' | '-' | '_'));
        for marker in ["final answer:", "answer:", "a:"] {
            if starts_with_ignore_case(body, marker) {
                let rest = body[marker.len()..].trim_start_matches(['*', '_']);
                return Some(Found { start: line_start, span: first_line(rest) });
            }
        }
        if line_start == 0 {
            return None;
        }
        end = line_start - 1;
    }
}

fn find_last_number(text: &str) -> Option<Found<'_>> {
    let bytes = text.as_bytes();
    let last = bytes.iter().rposition(u8::is_ascii_digit)?;
    let mut start = last;
    while start > 0 {
        let prev = bytes[start - 1];
        let joins = matches!(prev, b',' | b'.' | b'/') && start >= 2 && bytes[start - 2].is_ascii_digit();
        if prev.is_ascii_digit() || joins {
            start -= 1;
        } else {
            break;
        }
    }
    if start > 0 && bytes[start - 1] == b'-' && (start < 2 || !bytes[start - 2].is_ascii_alphanumeric()) {
        start -= 1;
    }
    Some(Found { start, span: &text[start..=last] })
}

/// The text up to the end of its first line.
fn first_line(text: &str) -> &str {
    text.split(['\n', '\r']).next().unwrap_or("")
}

/// The text up to the end of its first sentence or line. A period ends the sentence only when
/// followed by white space or the end, so decimal points (`4.50`) stay inside.
fn sentence(text: &str) -> &str {
    let line = first_line(text);
    let bytes = line.as_bytes();
    for (i, &b) in bytes.iter().enumerate() {
        if matches!(b, b'.' | b'!' | b'?' | b';') && bytes.get(i + 1).is_none_or(|n| n.is_ascii_whitespace()) {
            return &line[..i];
        }
    }
    line
}

fn rfind_ignore_case(hay: &[u8], needle: &[u8]) -> Option<usize> {
    if hay.len() < needle.len() {
        return None;
    }
    (0..=hay.len() - needle.len()).rev().find(|&i| hay[i..i + needle.len()].eq_ignore_ascii_case(needle))
}

fn starts_with_ignore_case(text: &str, prefix: &str) -> bool {
    text.len() >= prefix.len() && text.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_prefers_the_marker_that_comes_last() {
        let text = "#### 5\nOn second thought, the answer is 6.";
        assert_eq!(extract(text, Format::Auto), Some("6"));
        assert_eq!(extract(text, Format::Gsm8k), Some("5"));
    }

    #[test]
    fn boxed_inside_answer_is_takes_the_box() {
        assert_eq!(extract(r"The answer is $\boxed{\frac{1}{2}}$.", Format::Auto), Some(r"\frac{1}{2}"));
    }

    #[test]
    fn unclosed_box_commits_to_nothing() {
        assert_eq!(extract(r"so \boxed{12", Format::Boxed), None);
    }

    #[test]
    fn answer_is_keeps_decimal_points() {
        assert_eq!(extract("The answer is $4.50. Done", Format::AnswerIs), Some("$4.50"));
    }

    #[test]
    fn answer_is_needs_a_word_boundary() {
        assert_eq!(extract("the manswer is 3", Format::AnswerIs), None);
    }

    #[test]
    fn final_line_takes_the_last_marked_line() {
        let text = "A: first try 3\nreasoning\n**Answer:** 7\nHope this helps";
        assert_eq!(extract(text, Format::FinalLine), Some("7"));
    }

    #[test]
    fn last_number_takes_the_whole_last_number() {
        assert_eq!(extract("so 3 + 4 = 1,234.50 dollars.", Format::LastNumber), Some("1,234.50"));
        assert_eq!(extract("it is -12", Format::LastNumber), Some("-12"));
        assert_eq!(extract("x-12", Format::LastNumber), Some("12"));
        assert_eq!(extract("no digits here", Format::LastNumber), None);
    }

    #[test]
    fn format_names_round_trip() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>(), Ok(f));
        }
        assert!("boxed ".parse::<Format>().is_err());
    }
}
