//! Every worked solution of GSM8K's test split, as a completion, is judged right against its own
//! answer, and wrong once its final number is changed.

use std::path::PathBuf;

use flywheel_verify::{Format, Verifier};

fn test_split() -> Option<String> {
    let path = std::env::var_os("FLYWHEEL_GSM8K_TEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/datasets/gsm8k/test.jsonl"));
    match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) => {
            eprintln!("SKIPPED: GSM8K test split not readable at {} ({e}); set FLYWHEEL_GSM8K_TEST", path.display());
            None
        }
    }
}

fn solutions(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("valid JSONL");
            v["answer"].as_str().expect("answer field").to_owned()
        })
        .collect()
}

#[test]
fn every_gold_solution_matches_its_own_answer_and_not_a_changed_one() {
    let Some(text) = test_split() else { return };
    let solutions = solutions(&text);
    assert!(solutions.len() > 1000, "expected the full test split, got {}", solutions.len());
    let verifier = Verifier::new(Format::Auto);
    for (i, solution) in solutions.iter().enumerate() {
        let verdict = verifier.judge(solution, solution);
        assert!(verdict.correct, "line {}: own solution judged wrong (extracted {:?})", i + 1, verdict.extracted);

        let final_answer = Verifier::gold_answer(solution);
        let marker = solution.rfind("####").expect("GSM8K solutions end in ####");
        for changed in [format!("{final_answer}1"), format!("1{final_answer}"), bump_last_digit(final_answer)] {
            let wrong = format!("{}#### {changed}", &solution[..marker]);
            let verdict = verifier.judge(&wrong, solution);
            assert!(
                !verdict.correct,
                "line {}: changed answer {changed:?} judged right against {final_answer:?}",
                i + 1
            );
        }
    }
}

#[test]
fn gold_answers_restated_in_other_formats_match() {
    let Some(text) = test_split() else { return };
    for (i, solution) in solutions(&text).iter().enumerate() {
        let answer = Verifier::gold_answer(solution);
        for completion in [
            format!("So the answer is {answer}."),
            format!("Therefore \\boxed{{{answer}}}"),
            format!("Answer: {answer}"),
            format!("The final answer is: **{answer}**"),
        ] {
            assert!(Verifier::default().judge(&completion, solution).correct, "line {}: {completion:?}", i + 1);
        }
    }
}

/// The answer with its last digit changed (9 wraps to 0), so only one digit differs.
fn bump_last_digit(answer: &str) -> String {
    let at = answer.rfind(|c: char| c.is_ascii_digit()).expect("numeric answer");
    let digit = answer.as_bytes()[at] - b'0';
    format!("{}{}{}", &answer[..at], (digit + 1) % 10, &answer[at + 1..])
}
