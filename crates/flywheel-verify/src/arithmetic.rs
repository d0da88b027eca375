//! Does the working add up? Checking the equations a rationale writes.
//!
//! A final-answer check cannot tell a sound rationale from one whose mistakes cancel out or that
//! jumps to a hinted answer: "8 * 4 = 24. 24 + 8 = 32. The answer is 32." is judged right. Small
//! models write such rationales often, and a model trained on them learns the false arithmetic too.
//! [`equations`] finds the equations a text writes out in numbers and operators, such as
//! `8 * 4 = 32`, `104 - 2 * 3 = 104 - 6 = 98` or `(3 + 4) x 5 = 35`, and evaluates every side;
//! [`first_false`] returns the first one whose sides disagree.
//!
//! Operators are `+`, `-` (or `−`), `*`, `x` / `×` (between numbers), `/` (or `÷`), with the usual
//! precedence and parentheses. Numbers may carry thousands separators (`1,200`), decimals and a
//! leading `$`; a side may be negative. Words end an equation, so half-verbal working such as
//! "5 apples * 4 pears = 20 apples" is left unchecked rather than misread, and an equation needs an
//! operator on at least one side ("Day 1 = 5" is not arithmetic). A side written with decimals is
//! allowed the rounding its digits imply (`20 / 3 = 6.67` holds, `20 / 3 = 6.6` does not).

/// One equation chain as written, with the value of each side.
#[derive(Debug, Clone, PartialEq)]
pub struct Equation<'a> {
    /// The text of the chain, from its first number to its last.
    pub text: &'a str,
    /// The value of each side, left to right, with the rounding each side's decimals allow.
    sides: Vec<Side>,
}

/// One side of an equation: its value and the absolute error its written precision allows. Only a
/// side that is a lone number (a written result, `6.67`) is taken as possibly rounded; the operands
/// of an expression are taken as exact (`7 * 1.5` is 10.5, not anything from 10.15 to 10.85).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Side {
    value: f64,
    tolerance: f64,
}

impl Equation<'_> {
    /// Whether every side equals the next.
    pub fn holds(&self) -> bool {
        self.sides.windows(2).all(|w| {
            let (a, b) = (w[0], w[1]);
            let scale = a.value.abs().max(b.value.abs()).max(1.0);
            (a.value - b.value).abs() <= a.tolerance.max(b.tolerance) + 1e-9 * scale
        })
    }

    /// The value of each side, left to right.
    pub fn values(&self) -> Vec<f64> {
        self.sides.iter().map(|s| s.value).collect()
    }
}

/// The first equation in `text` whose sides disagree, if any.
///
/// ```
/// use flywheel_verify::arithmetic::first_false;
///
/// assert_eq!(first_false("He has 8 * 4 = 32 pens, then 32 - 5 = 27."), None);
/// assert_eq!(first_false("8 x 4 = 24 pens.").map(|e| e.text), Some("8 x 4 = 24"));
/// ```
pub fn first_false(text: &str) -> Option<Equation<'_>> {
    equations(text).into_iter().find(|e| !e.holds())
}

/// Whether an equation of `text` that holds ends in `value`: the answer is computed in the
/// working, not merely stated (a rationale for a hinted answer often just asserts it).
///
/// ```
/// use flywheel_verify::arithmetic::computes;
///
/// assert!(computes("8 * 4 = 32 pens.\nThe answer is 32.", 32.0));
/// assert!(!computes("Each box holds the rest.\nThe answer is 32.", 32.0));
/// assert!(!computes("8 * 4 = 33.\nThe answer is 33.", 33.0));
/// ```
pub fn computes(text: &str, value: f64) -> bool {
    equations(text).iter().filter(|e| e.holds()).any(|e| {
        let last = e.sides[e.sides.len() - 1];
        (last.value - value).abs() <= last.tolerance + 1e-9 * value.abs().max(1.0)
    })
}

/// The value of the expression `text` ends with, when it ends with one and then `=` (blanks
/// after it allowed): the result a calculator fills in. Only the last line is read, and the
/// expression is what follows the last word, `=` or line break before it; it needs an operator.
///
/// ```
/// use flywheel_verify::arithmetic::pending;
///
/// assert_eq!(pending("She buys 21 + 7 ="), Some(28.0));
/// assert_eq!(pending("104 - 2 * 3 = 104 - 6 = "), Some(98.0));
/// assert_eq!(pending("Day 1 ="), None);
/// assert_eq!(pending("21 + 7 = 28"), None);
/// ```
pub fn pending(text: &str) -> Option<f64> {
    let trimmed = text.trim_end_matches([' ', '\t']);
    if !trimmed.ends_with('=') {
        return None;
    }
    let line = &trimmed[trimmed.rfind('\n').map_or(0, |i| i + 1)..];
    let tokens = lex(line);
    let (last, before) = tokens.split_last()?;
    if last.kind != Kind::Equals {
        return None;
    }
    let begin = before.iter().rposition(|t| matches!(t.kind, Kind::Other | Kind::Equals)).map_or(0, |i| i + 1);
    let side = &before[begin..];
    let operator = side.iter().any(|t| matches!(t.kind, Kind::Op(_)));
    // An expression after a word that starts with an operator continues the word ("3x - 4 =").
    let continues_a_word = matches!(side.first().map(|t| t.kind), Some(Kind::Op(_)));
    if !operator || continues_a_word {
        return None;
    }
    evaluate(side).map(|s| s.value)
}

/// Every equation chain written in `text`, in order.
pub fn equations(text: &str) -> Vec<Equation<'_>> {
    let tokens = lex(text);
    let mut out = Vec::new();
    for run in runs(&tokens) {
        out.extend(chain(text, run));
    }
    out
}

/// A lexical token and its byte range in the text.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// A number and the absolute error its decimals allow.
    Number(f64, f64),
    Op(char),
    Open,
    Close,
    Equals,
    /// Anything else: a word, punctuation, a line break. Ends a chain.
    Other,
}

/// The tokens of `text`; spaces and tabs are dropped, everything else that is not part of an
/// arithmetic expression becomes [`Kind::Other`].
fn lex(text: &str) -> Vec<Token> {
    let bytes = text.as_bytes();
    let mut tokens: Vec<Token> = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let c = text[i..].chars().next().expect("in bounds");
        let width = c.len_utf8();
        let after_operand = matches!(tokens.last().map(|t| t.kind), Some(Kind::Number(..) | Kind::Close));
        let kind = match c {
            ' ' | '\t' => {
                i += 1;
                continue;
            }
            '0'..='9' | '$' | '.' => match number(text, i) {
                Some((value, tolerance, end)) => {
                    tokens.push(Token { kind: Kind::Number(value, tolerance), start: i, end });
                    i = end;
                    continue;
                }
                None => Kind::Other,
            },
            '+' | '*' | '/' | '÷' | '×' => Kind::Op(normalise(c)),
            '-' | '−' | '–' => Kind::Op('-'),
            'x' | 'X' if after_operand && next_is_operand(bytes, i + 1) => Kind::Op('*'),
            '(' => Kind::Open,
            ')' => Kind::Close,
            '=' => Kind::Equals,
            _ => Kind::Other,
        };
        tokens.push(Token { kind, start: i, end: i + width });
        i += width;
    }
    tokens
}

fn normalise(op: char) -> char {
    match op {
        '×' => '*',
        '÷' => '/',
        c => c,
    }
}

/// Whether the next non-blank byte after `from` starts a number or a parenthesis.
fn next_is_operand(bytes: &[u8], from: usize) -> bool {
    bytes[from.min(bytes.len())..]
        .iter()
        .find(|b| !matches!(b, b' ' | b'\t'))
        .is_some_and(|b| b.is_ascii_digit() || *b == b'(' || *b == b'$')
}

/// A number starting at byte `at`: an optional `$`, digits with optional thousands separators, an
/// optional decimal part (`.05` alone too), and an optional `%` (a hundredth). Returns its value,
/// the rounding its decimals allow, and its end. A number glued to a letter (`3rd`, `x2`) is not one.
fn number(text: &str, at: usize) -> Option<(f64, f64, usize)> {
    let bytes = text.as_bytes();
    if at > 0 && (bytes[at - 1].is_ascii_alphabetic() || bytes[at - 1] == b'_') && !glued_times(bytes, at - 1) {
        return None;
    }
    let mut i = at;
    if bytes[i] == b'$' {
        i += 1;
    }
    let digits_start = i;
    let mut digits = String::new();
    while i < bytes.len() {
        match bytes[i] {
            b'0'..=b'9' => {
                digits.push(bytes[i] as char);
                i += 1;
            }
            b',' if group_of_three(bytes, i + 1) => i += 1,
            _ => break,
        }
    }
    let leading_point = bytes.get(i) == Some(&b'.') && bytes.get(i + 1).is_some_and(u8::is_ascii_digit);
    if i == digits_start && !(leading_point && (at == 0 || !bytes[at - 1].is_ascii_digit())) {
        return None;
    }
    if digits.is_empty() {
        digits.push('0');
    }
    let mut tolerance = 0.0;
    if i + 1 < bytes.len() && bytes[i] == b'.' && bytes[i + 1].is_ascii_digit() {
        digits.push('.');
        i += 1;
        let mut decimals = 0;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            digits.push(bytes[i] as char);
            decimals += 1;
            i += 1;
        }
        tolerance = 0.5 * 10f64.powi(-decimals);
    }
    if i < bytes.len() && (bytes[i].is_ascii_alphabetic() || bytes[i] == b'_') && !glued_times(bytes, i) {
        return None;
    }
    let value: f64 = digits.parse().ok()?;
    if bytes.get(i) == Some(&b'%') {
        return Some((value / 100.0, tolerance / 100.0, i + 1));
    }
    Some((value, tolerance, i))
}

/// Whether the `x` at `at` is a times sign written without spaces (`3x4`).
fn glued_times(bytes: &[u8], at: usize) -> bool {
    matches!(bytes[at], b'x' | b'X')
        && at > 0
        && matches!(bytes[at - 1], b'0'..=b'9' | b')')
        && bytes.get(at + 1).is_some_and(|b| b.is_ascii_digit() || *b == b'(')
}

/// Whether exactly three digits start at `at` (not four: `1,2345` is a list, not a number).
fn group_of_three(bytes: &[u8], at: usize) -> bool {
    at + 3 <= bytes.len()
        && bytes[at..at + 3].iter().all(u8::is_ascii_digit)
        && bytes.get(at + 3).is_none_or(|b| !b.is_ascii_digit())
}

/// The maximal runs of arithmetic tokens (between [`Kind::Other`] tokens) that contain an `=`.
fn runs(tokens: &[Token]) -> Vec<&[Token]> {
    tokens.split(|t| t.kind == Kind::Other).filter(|run| run.iter().any(|t| t.kind == Kind::Equals)).collect()
}

/// The equations of one run: its `=`-separated sides, the longest stretches of consecutive sides
/// that each parse as a whole expression, each of at least two sides and with an operator on one.
/// A side that does not parse ends a stretch (`3 1/2` in "7 - 1/2 = 3 1/2" is a mixed number, not
/// arithmetic we read). A run that starts with an operator continues a word or a variable
/// ("3x - 4 = 28" reads as `- 4 = 28`), so its first side is never taken.
fn chain<'a>(text: &'a str, run: &[Token]) -> Vec<Equation<'a>> {
    let mut out = Vec::new();
    let mut current: Vec<(Side, &[Token])> = Vec::new();
    let mut flush = |current: &mut Vec<(Side, &[Token])>| {
        if current.len() >= 2 && current.iter().any(|(_, toks)| toks.len() > 1) {
            let start = current[0].1[0].start;
            let end = current.last().and_then(|(_, toks)| toks.last()).map_or(start, |t| t.end);
            out.push(Equation { text: &text[start..end], sides: current.iter().map(|(s, _)| *s).collect() });
        }
        current.clear();
    };
    let continues_a_word = matches!(run.first().map(|t| t.kind), Some(Kind::Op(_)));
    for (i, side) in run.split(|t| t.kind == Kind::Equals).enumerate() {
        match evaluate(side).filter(|_| !(i == 0 && continues_a_word)) {
            Some(value) => current.push((value, side)),
            None => flush(&mut current),
        }
    }
    flush(&mut current);
    out
}

/// The value of `tokens` as one whole expression.
fn evaluate(tokens: &[Token]) -> Option<Side> {
    let mut parser = Parser { tokens, at: 0 };
    let side = parser.sum()?;
    (parser.at == tokens.len() && side.value.is_finite()).then_some(side)
}

/// Recursive descent over `sum := product (('+'|'-') product)*`,
/// `product := atom ((('*'|'/') atom) | '(' sum ')')*`, `atom := ['-'] number | '(' sum ')'`.
struct Parser<'t> {
    tokens: &'t [Token],
    at: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<Kind> {
        self.tokens.get(self.at).map(|t| t.kind)
    }

    fn sum(&mut self) -> Option<Side> {
        let mut acc = self.product()?;
        while let Some(Kind::Op(op @ ('+' | '-'))) = self.peek() {
            self.at += 1;
            let rhs = self.product()?;
            acc = Side { value: if op == '+' { acc.value + rhs.value } else { acc.value - rhs.value }, tolerance: 0.0 };
        }
        Some(acc)
    }

    fn product(&mut self) -> Option<Side> {
        let mut acc = self.atom()?;
        loop {
            let op = match self.peek() {
                Some(Kind::Op(op @ ('*' | '/'))) => {
                    self.at += 1;
                    op
                }
                // A parenthesis right after an operand multiplies: `4(100)`, `1/2 (68)`.
                Some(Kind::Open) => '*',
                _ => break,
            };
            let rhs = self.atom()?;
            if op == '/' && rhs.value == 0.0 {
                return None;
            }
            let value = if op == '*' { acc.value * rhs.value } else { acc.value / rhs.value };
            acc = Side { value, tolerance: 0.0 };
        }
        Some(acc)
    }

    fn atom(&mut self) -> Option<Side> {
        match self.peek()? {
            Kind::Number(value, tolerance) => {
                self.at += 1;
                Some(Side { value, tolerance })
            }
            Kind::Op('-') => {
                self.at += 1;
                let inner = self.atom()?;
                Some(Side { value: -inner.value, ..inner })
            }
            Kind::Open => {
                self.at += 1;
                let inner = self.sum()?;
                (self.peek() == Some(Kind::Close)).then(|| self.at += 1)?;
                Some(inner)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str) -> Vec<(&str, bool)> {
        equations(text).into_iter().map(|e| (e.text, e.holds())).collect()
    }

    #[test]
    fn finds_and_checks_the_equations_of_a_rationale() {
        let text = "Sofia has 8 x 4 = 32 pencils.\nShe gives 13 away: 32 - 13 = 17 pencils.\nThe answer is 17.";
        assert_eq!(texts(text), [("8 x 4 = 32", true), ("32 - 13 = 17", false)]);
        assert_eq!(first_false(text).map(|e| e.text), Some("32 - 13 = 17"));
    }

    #[test]
    fn precedence_parentheses_and_chains() {
        assert_eq!(texts("104 - 2 * 3 = 104 - 6 = 98"), [("104 - 2 * 3 = 104 - 6 = 98", true)]);
        assert_eq!(texts("104 - 2 * 3 = 304 - 6 = 98"), [("104 - 2 * 3 = 304 - 6 = 98", false)]);
        assert_eq!(texts("(3 + 4) x 5 = 35 and (3+4)×5=36"), [("(3 + 4) x 5 = 35", true), ("(3+4)×5=36", false)]);
        assert_eq!(
            texts("56 ÷ 8 = 7, 9 * 7 = 63, 10 − 4 = 6"),
            [("56 ÷ 8 = 7", true), ("9 * 7 = 63", true), ("10 − 4 = 6", true)]
        );
        assert_eq!(equations("a chain 2 + 2 = 4 = 5")[0].values(), [4.0, 4.0, 5.0]);
        assert!(!equations("2 + 2 = 4 = 5")[0].holds());
    }

    #[test]
    fn numbers_as_models_write_them() {
        assert_eq!(texts("$1,200 + $300 = $1,500"), [("$1,200 + $300 = $1,500", true)]);
        assert_eq!(texts("2.5 * 4 = 10.0"), [("2.5 * 4 = 10.0", true)]);
        assert_eq!(texts("20 / 3 = 6.67"), [("20 / 3 = 6.67", true)]);
        assert_eq!(texts("20 / 3 = 6.6"), [("20 / 3 = 6.6", false)]);
        assert_eq!(texts("20 / 3 = 6"), [("20 / 3 = 6", false)]);
        assert_eq!(texts("5 - 8 = -3"), [("5 - 8 = -3", true)]);
        assert_eq!(texts("1,234 + 1 = 1,235"), [("1,234 + 1 = 1,235", true)]);
        assert_eq!(
            texts("so .05*104,000=$5200 and .5 + 0.25 = .75"),
            [(".05*104,000=$5200", true), (".5 + 0.25 = .75", true)]
        );
        assert_eq!(texts("3 / 6 = 50% and 3 / 6 = 60%"), [("3 / 6 = 50%", true), ("3 / 6 = 60%", false)]);
        assert_eq!(
            texts("4(100)=400, 5+2(3)=5+6=11, 1/2 (68) + 10 = 44, 27(1/3)=8"),
            [("4(100)=400", true), ("5+2(3)=5+6=11", true), ("1/2 (68) + 10 = 44", true), ("27(1/3)=8", false),]
        );
        assert_eq!(texts("28 – 4 = 24"), [("28 – 4 = 24", true)]);
    }

    #[test]
    fn words_break_equations_instead_of_being_misread() {
        // Units between the numbers: not an equation we can read, so not judged.
        assert!(equations("5 apples * 4 pears = 20 apples").is_empty());
        assert!(equations("Step 2 = done").is_empty());
        // A lone number on each side is not arithmetic ("Day 1 = 5 km").
        assert!(equations("1 = 5").is_empty());
        // `x` is multiplication only between numbers.
        assert!(equations("x = 5 + 3").is_empty());
        assert_eq!(texts("3 x 4 = 12, 3x4=13"), [("3 x 4 = 12", true), ("3x4=13", false)]);
        assert_eq!(texts("box x2 = 4 + 4"), []);
        assert!(equations("Let x be 3").is_empty());
        // Division by zero cannot be judged.
        assert!(equations("4 / 0 = 2").is_empty());
        // A number glued to a word is not a number.
        assert!(equations("the 3rd + 4 = 7").is_empty());
    }

    #[test]
    fn a_side_that_does_not_parse_splits_the_chain() {
        // "7 +" is no expression: it ends the first chain (too short to be one) and the next starts.
        assert_eq!(texts("Total: 3 + 4 = 7 + = 9 - 1 = 8"), [("9 - 1 = 8", true)]);
        assert_eq!(texts("5 - 1 - 1/2 = 3 1/2 apples"), []);
        // Operators right after a word continue it: "3x - 4" is not "-4".
        assert_eq!(texts("so 3x - 4 = 28 and 3x +4 - 4 = 28"), []);
        assert_eq!(texts("5 - 8 = -3 = -6 / 2"), [("5 - 8 = -3 = -6 / 2", true)]);
    }

    #[test]
    fn first_false_is_none_for_sound_or_unchecked_text() {
        assert_eq!(first_false("The answer is 42."), None);
        assert_eq!(first_false("6 * 7 = 42.\nThe answer is 42."), None);
        assert!(first_false("6 * 7 = 48.\nThe answer is 48.").is_some());
    }

    #[test]
    fn pending_reads_the_expression_before_a_trailing_equals_sign() {
        assert_eq!(pending("Each car seats 12 people, so 12 * 6 ="), Some(72.0));
        assert_eq!(pending("21 + 7 = 28.\n28 * 3 =  "), Some(84.0));
        assert_eq!(pending("$1,200 + $300 ="), Some(1500.0));
        assert_eq!(pending("(3 + 4) x 5 ="), Some(35.0));
        assert_eq!(pending("86 - 5 * 9 ="), Some(41.0));
        assert_eq!(pending("104 - 2 * 3 = 104 - 6 ="), Some(98.0));
        assert_eq!(pending("11 / 4 ="), Some(2.75));
        // No expression, or not at the end: nothing to fill in.
        for text in ["Day 1 =", "x =", "21 + 7 = 28", "21 + 7", "2 ==", "3x - 4 =", "=", "", "7 / 0 =", "21 +\n7 ="] {
            assert_eq!(pending(text), None, "{text:?}");
        }
    }
}
