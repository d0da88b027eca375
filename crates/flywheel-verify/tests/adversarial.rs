//! Regression table: each row is a way a self-training verifier has been (or could be) fooled.
//! The comment on a row names the bug it pins.

use flywheel_verify::{Format, Verifier};

struct Case {
    completion: &'static str,
    gold: &'static str,
    format: Format,
    extracted: Option<&'static str>,
    correct: bool,
    bug: &'static str,
}

const fn case(
    completion: &'static str,
    gold: &'static str,
    format: Format,
    extracted: Option<&'static str>,
    correct: bool,
    bug: &'static str,
) -> Case {
    Case { completion, gold, format, extracted, correct, bug }
}

use Format::*;

const CASES: &[Case] = &[
    // Substring matching.
    case("The answer is 4.", "42", Auto, Some("4"), false, "'4' is a substring of '42'"),
    case("The answer is 42.", "4", Auto, Some("42"), false, "gold '4' is a substring of '42'"),
    case("The answer is 100.", "10", Auto, Some("100"), false, "'10' is a prefix of '100'"),
    case("#### 10", "#### 100", Auto, Some("10"), false, "'10' is a substring of '100'"),
    case("The answer is incorrect.", "correct", Auto, Some("incorrect"), false, "'correct' inside 'incorrect'"),
    case("The answer is .", "18", Auto, None, false, "empty answer is a substring of everything"),
    case("", "18", Auto, None, false, "empty completion"),
    case("####", "", Auto, None, false, "empty against empty is not a match"),
    case("The answer is -5.", "5", Auto, Some("-5"), false, "sign dropped by a digits-only regex"),
    case("The answer is 5.", "-5", Auto, Some("5"), false, "sign dropped on the gold side"),
    // Strict regexes that miss a right answer followed by more text.
    case(
        "The answer is 18 dollars because she sells 9 eggs.",
        "18",
        Auto,
        Some("18 dollars because she sells 9 eggs"),
        false,
        "a second number after the answer makes it ambiguous, not right",
    ),
    case(
        "So the answer is 18 dollars per day.",
        "18",
        Auto,
        Some("18 dollars per day"),
        true,
        "units after the number",
    ),
    case("The answer is $18.00. I hope this helps!", "#### 18", Auto, Some("$18.00"), true, "text after the sentence"),
    case(
        "The final answer is: **1,234**\n\nLet me know if you need more.",
        "1234",
        Auto,
        Some("**1,234**"),
        true,
        "markdown bold and a trailing paragraph",
    ),
    case(
        "Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.",
        "0.75",
        Auto,
        Some("$\\frac{3}{4}$"),
        true,
        "Minerva format, LaTeX fraction vs decimal",
    ),
    // First number of the reasoning instead of the final answer.
    case("She has 3 apples and buys 4 more, so 3 + 4 = 7.\n#### 7", "7", Auto, Some("7"), true, "first number is 3"),
    case("First 2 * 3 = 6, then 6 + 1 = 7", "7", LastNumber, Some("7"), true, "last number, not first"),
    case("First 2 * 3 = 6, then 6 + 1 = 7", "7", Auto, None, false, "auto never guesses from bare numbers"),
    // The last marker wins.
    case("The answer is 5. Wait, I made an error. The answer is 6.", "6", Auto, Some("6"), true, "self-correction"),
    case("\\boxed{5} is wrong; the right one is \\boxed{6}", "6", Boxed, Some("6"), true, "last box"),
    case("#### 5\n#### 6", "5", Gsm8k, Some("6"), false, "first #### of two"),
    // Formats.
    case("So \\boxed{\\frac{1}{2}} cups", "1/2", Auto, Some("\\frac{1}{2}"), true, "nested braces in a box"),
    case("\\boxed{12", "12", Auto, None, false, "an unclosed box is a truncated completion"),
    case("Total: 5 + 7 = 12\nAnswer: 12", "12", FinalLine, Some("12"), true, "final line"),
    case("A: 3 + 4 = 7", "7", FinalLine, Some("3 + 4 = 7"), true, "equation gives its right-hand side"),
    case("It costs $1,234,567.", "1234567", LastNumber, Some("1,234,567"), true, "thousands separators"),
    case("The answer is 1,23.", "123", Auto, Some("1,23"), false, "a malformed group is not a number"),
    case("#### 70,000", "70000", Auto, Some("70,000"), true, "GSM8K gold with a separator"),
    case("The answer is 25%.", "25", Auto, Some("25%"), true, "percent sign"),
    case("The answer is 1.50.", "1.5", Auto, Some("1.50"), true, "trailing zero"),
    case("The answer is 0.33.", "1/3", Auto, Some("0.33"), false, "tolerance is relative 1e-6, not 1e-2"),
    case("The answer is 0.333333333333.", "1/3", Auto, Some("0.333333333333"), true, "close decimal of a fraction"),
    case("The answer is 0.3333.", "1/3", Auto, Some("0.3333"), false, "a rough decimal of a fraction"),
    case("The answer is 0.30000000000000004.", "0.3", Auto, Some("0.30000000000000004"), true, "float artefact"),
    case("The answer is $1000.01.", "1000", Auto, Some("$1000.01"), false, "a cent off"),
    case(
        "The answer is 12345678901234567891.",
        "12345678901234567890",
        Auto,
        Some("12345678901234567891"),
        false,
        "large integers compare exactly, not through f64",
    ),
    case("The answer is Paris.", "paris", Auto, Some("Paris"), true, "case of text"),
    case("The answer is New York City.", "York", Auto, Some("New York City"), false, "text is compared whole"),
    case("The answer is four.", "4", Auto, Some("four"), false, "number words are not digits"),
    case("The answer is 18 or 19.", "18", Auto, Some("18 or 19"), false, "hedging between answers"),
    case("the manswer is 7", "7", AnswerIs, None, false, "marker inside a word"),
    case("The answer is\n42", "42", Auto, Some("42"), true, "answer on the next line"),
    case("The answer is −5.", "-5", Auto, Some("−5"), true, "unicode minus"),
    case("The answer is -$5.", "$-5", Auto, Some("-$5"), true, "sign and currency in either order"),
];

#[test]
fn adversarial_table() {
    let mut failures = Vec::new();
    for c in CASES {
        let verdict = Verifier::new(c.format).judge(c.completion, c.gold);
        if verdict.extracted != c.extracted || verdict.correct != c.correct {
            failures.push(format!(
                "{}: {:?} vs gold {:?} ({}): got extracted={:?} correct={}, want extracted={:?} correct={}",
                c.bug, c.completion, c.gold, c.format, verdict.extracted, verdict.correct, c.extracted, c.correct
            ));
        }
    }
    assert!(failures.is_empty(), "{} of {} cases failed:\n{}", failures.len(), CASES.len(), failures.join("\n"));
}

#[test]
fn last_number_fallback_only_when_asked() {
    let text = "3 + 4 = 7";
    assert!(!Verifier::new(Auto).judge(text, "7").correct);
    assert!(Verifier::new(Auto).with_last_number_fallback(true).judge(text, "7").correct);
    // A marker, when present, beats the fallback.
    assert!(!Verifier::new(Auto).with_last_number_fallback(true).judge("The answer is 6. 7", "7").correct);
}
