//! Tools a model may use while it writes: a calculator that fills in the result of the arithmetic a
//! rationale writes out.
//!
//! With `[model] calculator = true`, every completion (sampled for training or answered at
//! evaluation) is written with the calculator: when the text so far ends with an expression and
//! `=` (`12 * 6 =`), the result (` 72`) is written in the model's place and the model goes on from
//! it. The GSM8K paper sampled its verifier data this way (Cobbe et al. 2021). The model still
//! chooses which numbers to combine and how: a run with the calculator measures planning, one
//! without it planning and arithmetic together.

use flywheel_core::Tool;
use flywheel_verify::arithmetic::pending;

/// Fills in `= result` after an arithmetic expression (see the module docs).
#[derive(Debug, Clone, Copy, Default)]
pub struct Calculator;

impl Tool for Calculator {
    fn write(&self, text: &str) -> Option<String> {
        let value = pending(text)?;
        let space = if text.ends_with([' ', '\t']) { "" } else { " " };
        Some(format!("{space}{}", format_result(value)))
    }
}

/// `value` as a person writes a result: a whole number without decimals, otherwise rounded to two
/// places without trailing zeros (`2.75`, `3.33`, `0.5`).
fn format_result(value: f64) -> String {
    let rounded = (value * 100.0).round() / 100.0;
    if rounded == rounded.trunc() {
        // Whole (2.999 too, once rounded), and never "-0".
        return format!("{}", rounded as i64);
    }
    format!("{rounded:.2}").trim_end_matches('0').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_the_result_after_an_expression_and_nothing_elsewhere() {
        assert_eq!(Calculator.write("Each car seats 12 people, so 12 * 6 =").as_deref(), Some(" 72"));
        assert_eq!(Calculator.write("21 + 7 = ").as_deref(), Some("28"));
        assert_eq!(Calculator.write("8 / 4 =").as_deref(), Some(" 2"));
        assert_eq!(Calculator.write("11 / 4 =").as_deref(), Some(" 2.75"));
        assert_eq!(Calculator.write("10 / 3 =").as_deref(), Some(" 3.33"));
        assert_eq!(Calculator.write("1 / 2 =").as_deref(), Some(" 0.5"));
        assert_eq!(Calculator.write("5 - 9 =").as_deref(), Some(" -4"));
        assert_eq!(Calculator.write("2999 / 1000 =").as_deref(), Some(" 3"));
        assert_eq!(Calculator.write("1 / 1000 - 2 / 1000 =").as_deref(), Some(" 0"));
        for text in ["21 + 7 = 28", "Day 1 =", "The answer is", ""] {
            assert_eq!(Calculator.write(text), None, "{text:?}");
        }
    }
}
