//! An extracted answer span, read as a number where it is one and as normalised text otherwise.
//!
//! Reading rules, in order:
//! 1. Markup around the answer goes: white space, `**bold**`, `$...$`, `\(...\)`, `\text{...}`,
//!    quotes, brackets, and trailing sentence punctuation.
//! 2. An equation gives its right-hand side: `5 + 3 = 8` reads as `8`.
//! 3. A number followed only by words is that number: `18 dollars`, `$18.00`, `25%`, `12 cm^2`.
//!    Any other digit after the number (`18 or 19`, `3 and 4`) makes the span text, so a hedge never
//!    passes as a number.
//! 4. Anything else is text: lower-cased, white space collapsed, compared only as a whole string.

use crate::Number;

/// A final answer, ready to compare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Nothing was there: matches nothing, not even another empty answer.
    Empty,
    /// A numeric answer.
    Number(Number),
    /// A non-numeric answer, normalised.
    Text(String),
}

impl Answer {
    /// Reads an extracted span.
    pub fn parse(span: &str) -> Answer {
        let mut s = strip_markup(span);
        if let Some(eq) = s.rfind('=') {
            s = strip_markup(&s[eq + 1..]);
        }
        if s.is_empty() {
            return Answer::Empty;
        }
        if let Some((number, rest)) = Number::parse_prefix(s) {
            if is_unit(rest) {
                return Answer::Number(number);
            }
        }
        Answer::Text(normalise_text(s))
    }

    /// Whether `self` and `other` are the same answer. Numbers compare as numbers, text as whole
    /// normalised strings; a number never equals text and [`Answer::Empty`] equals nothing.
    pub fn matches(&self, other: &Answer) -> bool {
        match (self, other) {
            (Answer::Number(a), Answer::Number(b)) => a.same_value(b),
            (Answer::Text(a), Answer::Text(b)) => !a.is_empty() && a == b,
            _ => false,
        }
    }
}

/// Characters that wrap an answer without being part of it.
fn is_wrapper(c: char) -> bool {
    c.is_whitespace() || matches!(c, '*' | '_' | '`' | '"' | '\'' | '(' | ')' | '[' | ']' | ',' | ':' | ';')
}

/// Removes surrounding markup until none is left.
fn strip_markup(span: &str) -> &str {
    let mut s = span;
    loop {
        let before = s;
        s = s.trim();
        for (open, close) in
            [("$", "$"), ("\\(", "\\)"), ("\\[", "\\]"), ("\\text{", "}"), ("\\mathrm{", "}"), ("{", "}")]
        {
            if let Some(inner) = s.strip_prefix(open).and_then(|r| r.strip_suffix(close)) {
                s = inner;
            }
        }
        s = s.trim_matches(is_wrapper);
        s = s.trim_end_matches(['.', '!', '?']);
        if s.len() == before.len() {
            return s;
        }
    }
}

/// Whether what follows a number is only a unit or other words (no second number).
fn is_unit(rest: &str) -> bool {
    let mut prev = ' ';
    rest.chars().all(|c| {
        let ok = if c.is_ascii_digit() {
            prev == '^' || (prev.is_ascii_digit() && rest.contains('^'))
        } else {
            c.is_alphabetic()
                || c.is_whitespace()
                || matches!(
                    c,
                    '.' | ','
                        | '!'
                        | '/'
                        | '\\'
                        | '{'
                        | '}'
                        | '^'
                        | '\u{b2}'
                        | '\u{b3}'
                        | '\''
                        | ')'
                        | '('
                        | '*'
                        | '_'
                        | '$'
                )
        };
        prev = c;
        ok
    })
}

fn normalise_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.extend(word.chars().flat_map(char::to_lowercase));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same(a: &str, b: &str) -> bool {
        Answer::parse(a).matches(&Answer::parse(b))
    }

    #[test]
    fn numbers_with_units_and_markup() {
        assert!(same("18 dollars", "18"));
        assert!(same("**$18.00**", "18"));
        assert!(same("$18$", "18"));
        assert!(same("12 cm^2", "12"));
        assert!(same("5 + 3 = 8", "8"));
        assert!(same(r"\text{42}", "42"));
    }

    #[test]
    fn hedges_are_not_numbers() {
        assert!(!same("18 or 19", "18"));
        assert!(!same("3 and 4", "3"));
    }

    #[test]
    fn text_compares_whole() {
        assert!(same("  Paris. ", "paris"));
        assert!(!same("incorrect", "correct"));
        assert!(!same("New York City", "York"));
        assert!(!same("", ""));
        assert!(!same("**", "**"));
    }

    #[test]
    fn number_never_equals_text() {
        assert!(!same("4", "four"));
    }
}
