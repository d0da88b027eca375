//! Property tests: no input panics, and a number written in any supported way matches itself.

use flywheel_verify::{extract, Answer, Format, Number, Verifier};
use proptest::prelude::*;

/// `n` with thousands separators.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn no_input_panics(text in ".{0,200}", gold in ".{0,40}") {
        for format in Format::ALL {
            let v = Verifier::new(format).with_last_number_fallback(true).judge(&text, &gold);
            if let Some(span) = v.extracted {
                prop_assert!(!span.is_empty());
                prop_assert!(text.contains(span));
            }
            let _ = extract(&text, format);
        }
        let _ = Number::parse(&text);
        let _ = Answer::parse(&text);
    }

    #[test]
    fn markup_heavy_input_never_panics(text in r"[\\{}$#*0-9.,/ a-zA-Z:=%-]{0,80}") {
        for format in Format::ALL {
            let _ = Verifier::new(format).judge(&text, &text);
        }
    }

    #[test]
    fn integers_match_themselves_in_every_spelling(n in 0u64..10_000_000_000, neg in any::<bool>()) {
        let sign = if neg && n != 0 { "-" } else { "" };
        let gold = format!("{sign}{n}");
        let spellings = [
            format!("{sign}{n}"),
            format!("{sign}{}", grouped(n)),
            format!("{sign}${}", grouped(n)),
            format!("{sign}{n}.00"),
            format!("{sign}{n} dollars"),
            format!("{sign}{n}%"),
            format!("{sign}{n}/1"),
        ];
        for s in &spellings {
            for completion in [format!("The answer is {s}."), format!("#### {s}"), format!("\\boxed{{{s}}}"), format!("Answer: {s}")] {
                let v = Verifier::default().judge(&completion, &gold);
                prop_assert!(v.correct, "{completion:?} vs {gold:?}");
            }
        }
        let other = format!("{sign}{}", n + 1);
        let wrong = format!("#### {other}");
        let verdict = Verifier::default().judge(&wrong, &gold);
        prop_assert!(!verdict.correct, "{wrong:?} vs {gold:?}");
    }

    #[test]
    fn decimals_match_themselves(int in 0u64..100_000, frac in 1u32..1000) {
        let text = format!("{int}.{frac:03}");
        let padded = format!("{int}.{frac:03}000");
        prop_assert!(Answer::parse(&text).matches(&Answer::parse(&padded)));
        let bumped = format!("{int}.{:03}", frac - 1);
        prop_assert!(!Answer::parse(&text).matches(&Answer::parse(&bumped)));
    }
}
