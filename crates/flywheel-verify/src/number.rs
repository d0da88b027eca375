//! Numbers as models write them, compared as numbers.
//!
//! A [`Number`] is parsed from the start of an answer span: an optional sign, an optional currency
//! sign (either order: `-$5`, `$-5`), digits with optional thousands separators (`1,234,567`; groups
//! after the first must have exactly three digits), an optional decimal part, an optional fraction
//! (`3/4` or LaTeX `\frac{3}{4}`), and an optional `%`. Values are kept as exact reduced ratios of
//! 128-bit integers, so integers compare exactly at any size a model writes; numbers with more than 38
//! significant digits are kept as canonical digit strings. Two integers compare exactly; where one
//! side is not an integer the comparison allows a relative difference of
//! [`Number::RELATIVE_TOLERANCE`] (1e-9): enough for float artefacts such as `0.30000000000000004` and
//! for a 12-digit decimal of `1/3`, far too little for `0.33`, or for `1000.01` against `1000`.

/// A parsed number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Number {
    negative: bool,
    magnitude: Magnitude,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Magnitude {
    /// `num / den`, reduced, `den > 0`.
    Ratio { num: u128, den: u128 },
    /// Too many digits for `u128`: integer digits without leading zeros, fraction digits without
    /// trailing zeros.
    Big { int: String, frac: String },
}

impl Number {
    /// Relative tolerance for comparing numbers of which at least one is not an integer.
    pub const RELATIVE_TOLERANCE: f64 = 1e-9;

    /// Parses a number at the start of `text`; returns it and the unparsed rest.
    pub fn parse_prefix(text: &str) -> Option<(Number, &str)> {
        let (negative, rest) = sign_and_currency(text);
        let (magnitude, rest) = if let Some(rest) = strip_frac_command(rest) {
            latex_fraction(rest)?
        } else {
            let (value, rest) = decimal(rest)?;
            match rest.strip_prefix('/') {
                Some(den_text) if value.is_integer() => {
                    let (den, after) = decimal(den_text)?;
                    (divide(value, den)?, after)
                }
                _ => (value, rest),
            }
        };
        let rest = rest.strip_prefix("\\%").or_else(|| rest.trim_start().strip_prefix('%')).unwrap_or(rest);
        let negative = negative && !magnitude.is_zero();
        Some((Number { negative, magnitude }, rest))
    }

    /// The whole of `text` as a number, or `None` if anything but a number is there.
    pub fn parse(text: &str) -> Option<Number> {
        match Number::parse_prefix(text.trim()) {
            Some((n, rest)) if rest.trim().is_empty() => Some(n),
            _ => None,
        }
    }

    /// Whether the number is an integer.
    pub fn is_integer(&self) -> bool {
        self.magnitude.is_integer()
    }

    /// The nearest `f64`.
    pub fn to_f64(&self) -> f64 {
        let m = match &self.magnitude {
            Magnitude::Ratio { num, den } => *num as f64 / *den as f64,
            Magnitude::Big { int, frac } => format!("{int}.{frac}0").parse().unwrap_or(f64::INFINITY),
        };
        if self.negative {
            -m
        } else {
            m
        }
    }

    /// Whether two numbers are the same answer: exactly equal, or, where at least one is not an
    /// integer, within [`Number::RELATIVE_TOLERANCE`] of each other.
    pub fn same_value(&self, other: &Number) -> bool {
        if self == other {
            return true;
        }
        if self.is_integer() && other.is_integer() {
            return false;
        }
        let (a, b) = (self.to_f64(), other.to_f64());
        (a - b).abs() <= Self::RELATIVE_TOLERANCE * a.abs().max(b.abs())
    }
}

impl Magnitude {
    fn is_integer(&self) -> bool {
        match self {
            Magnitude::Ratio { den, .. } => *den == 1,
            Magnitude::Big { frac, .. } => frac.is_empty(),
        }
    }

    fn is_zero(&self) -> bool {
        matches!(self, Magnitude::Ratio { num: 0, .. })
    }
}

/// Leading sign and currency, in either order; `true` when negative.
fn sign_and_currency(text: &str) -> (bool, &str) {
    let mut rest = text;
    let mut negative = false;
    for _ in 0..2 {
        if let Some(r) = ["-", "\u{2212}"].iter().find_map(|s| rest.strip_prefix(s)) {
            negative = !negative;
            rest = r;
        } else if let Some(r) = rest.strip_prefix('+') {
            rest = r;
        }
        if let Some(r) = ["\\$", "$", "\u{20ac}", "\u{a3}", "\u{a5}"].iter().find_map(|s| rest.strip_prefix(s)) {
            rest = r.trim_start();
        }
    }
    (negative, rest)
}

/// Digits with thousands separators and an optional decimal part.
fn decimal(text: &str) -> Option<(Magnitude, &str)> {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut int_digits: Vec<u8> = Vec::new();
    while i < bytes.len() && bytes[i].is_ascii_digit() {
        int_digits.push(bytes[i]);
        i += 1;
    }
    // Thousands groups: ",ddd" not followed by another digit; only after a first group of 1-3.
    if (1..=3).contains(&int_digits.len()) {
        while bytes.get(i) == Some(&b',')
            && bytes.get(i + 1..i + 4).is_some_and(|g| g.iter().all(u8::is_ascii_digit))
            && !bytes.get(i + 4).is_some_and(u8::is_ascii_digit)
        {
            int_digits.extend_from_slice(&bytes[i + 1..i + 4]);
            i += 4;
        }
    }
    let mut frac_digits: &[u8] = &[];
    if bytes.get(i) == Some(&b'.') && bytes.get(i + 1).is_some_and(u8::is_ascii_digit) {
        let start = i + 1;
        i = start;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = &bytes[start..i];
    }
    if int_digits.is_empty() && frac_digits.is_empty() {
        return None;
    }
    Some((from_digits(&int_digits, frac_digits), &text[i..]))
}

fn from_digits(int: &[u8], frac: &[u8]) -> Magnitude {
    let int = trim_start_zeros(int);
    let frac = trim_end_zeros(frac);
    let exact = (|| {
        let mut num: u128 = 0;
        for &d in int.iter().chain(frac) {
            num = num.checked_mul(10)?.checked_add(u128::from(d - b'0'))?;
        }
        let den = 10u128.checked_pow(u32::try_from(frac.len()).ok()?)?;
        Some(reduce(num, den))
    })();
    exact.unwrap_or_else(|| Magnitude::Big {
        int: String::from_utf8_lossy(int).into_owned(),
        frac: String::from_utf8_lossy(frac).into_owned(),
    })
}

fn divide(num: Magnitude, den: Magnitude) -> Option<Magnitude> {
    match (num, den) {
        (Magnitude::Ratio { num: a, den: 1 }, Magnitude::Ratio { num: b, den: 1 }) if b != 0 => Some(reduce(a, b)),
        _ => None,
    }
}

fn strip_frac_command(text: &str) -> Option<&str> {
    ["\\frac", "\\dfrac", "\\tfrac"].iter().find_map(|c| text.strip_prefix(c))
}

/// `{a}{b}` after a `\frac` command, integers only.
fn latex_fraction(text: &str) -> Option<(Magnitude, &str)> {
    let (num, rest) = brace_group(text)?;
    let (den, rest) = brace_group(rest)?;
    Some((divide(num, den)?, rest))
}

/// `{number}`, white space allowed inside.
fn brace_group(text: &str) -> Option<(Magnitude, &str)> {
    let inner = text.trim_start().strip_prefix('{')?;
    let (value, rest) = decimal(inner.trim_start())?;
    Some((value, rest.trim_start().strip_prefix('}')?))
}

fn reduce(num: u128, den: u128) -> Magnitude {
    let g = gcd(num, den).max(1);
    Magnitude::Ratio { num: num / g, den: den / g }
}

fn gcd(mut a: u128, mut b: u128) -> u128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

fn trim_start_zeros(d: &[u8]) -> &[u8] {
    let n = d.iter().take_while(|&&b| b == b'0').count();
    &d[n..]
}

fn trim_end_zeros(d: &[u8]) -> &[u8] {
    let n = d.iter().rev().take_while(|&&b| b == b'0').count();
    &d[..d.len() - n]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(s: &str) -> Number {
        Number::parse(s).unwrap_or_else(|| panic!("{s:?} should parse"))
    }

    #[test]
    fn spellings_of_the_same_number_agree() {
        for s in ["1234", "1,234", "$1,234", "1234.00", "+1234", "1234.", "$ 1234", "\\$1,234.0"] {
            assert!(n("1234").same_value(&n(s.trim_end_matches('.'))), "{s}");
        }
        assert!(n("3/4").same_value(&n("0.75")));
        assert!(n("\\frac{3}{4}").same_value(&n(".75")));
        assert!(n("-$5").same_value(&n("$-5")));
        assert!(n("-0").same_value(&n("0")));
        assert!(n("25%").same_value(&n("25")));
    }

    #[test]
    fn different_numbers_differ() {
        assert!(!n("4").same_value(&n("42")));
        assert!(!n("10").same_value(&n("100")));
        assert!(!n("-5").same_value(&n("5")));
        assert!(!n("18").same_value(&n("18.5")));
        assert!(!n("0.33").same_value(&n("1/3")));
    }

    #[test]
    fn large_integers_are_exact() {
        assert!(!n("12345678901234567890123").same_value(&n("12345678901234567890124")));
        let big = "123456789012345678901234567890123456789012345";
        assert!(n(big).same_value(&n(&format!("{big}.000"))));
        assert!(!n(big).same_value(&n("123456789012345678901234567890123456789012346")));
    }

    #[test]
    fn bad_grouping_is_not_a_number() {
        assert!(Number::parse("1,23").is_none());
        assert!(Number::parse("1234,567").is_none());
        assert!(Number::parse("3/0").is_none());
        assert!(Number::parse("").is_none());
        assert!(Number::parse("-").is_none());
    }
}
