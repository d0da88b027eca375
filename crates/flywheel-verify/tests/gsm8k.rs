//! Every worked solution of GSM8K's test split, as a completion, is judged right against its own
//! answer, and wrong once its final number is changed.

use std::path::PathBuf;

use flywheel_verify::{Format, Verifier};

/// GSM8K's test split, kept in the repository (`data/gsm8k/`, MIT licence): its absence is a
/// failure, never a skipped test reported as passed.
fn test_split() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/gsm8k/test.jsonl");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("GSM8K's test split at {}: {e}", path.display()))
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
    let text = test_split();
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
    let text = test_split();
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

/// GSM8K's solutions were written by people and their `<<48/2=24>>` annotations computed by a
/// calculator: the arithmetic checker must find nearly all of them sound (a checker that flags
/// correct working would throw away good rationales), and find a changed result false.
#[test]
fn gold_working_passes_the_arithmetic_check_and_a_changed_result_does_not() {
    use flywheel_verify::arithmetic::{computes, equations, first_false};
    use flywheel_verify::Number;

    let text = test_split();
    let solutions = solutions(&text);
    let (mut flagged, mut computed, mut checked) = (Vec::new(), 0, 0);
    for (i, solution) in solutions.iter().enumerate() {
        if let Some(e) = first_false(solution) {
            flagged.push(format!("line {}: {}", i + 1, e.text));
        }
        let answer = Number::parse(Verifier::gold_answer(solution)).map(|n| n.to_f64());
        computed += usize::from(answer.is_some_and(|a| computes(solution, a)));
        // Change the result of the first calculator annotation that is arithmetic: the checker
        // must notice, in the annotation and in the whole solution.
        let annotation = solution.find("<<").and_then(|open| {
            let close = open + solution[open..].find(">>")?;
            Some((open + 2, close))
        });
        if let Some((start, end)) = annotation.filter(|&(s, e)| !equations(&solution[s..e]).is_empty()) {
            checked += 1;
            let broken = format!("{}9{}", &solution[..end], &solution[end..]);
            assert!(first_false(&broken[start..=end]).is_some(), "line {}: changed result not caught", i + 1);
            assert!(first_false(&broken).is_some(), "line {}: changed result not caught in the solution", i + 1);
        }
    }
    let n = solutions.len();
    eprintln!(
        "{} of {n} gold solutions flagged, {computed} compute their answer, {checked} changes caught",
        flagged.len()
    );
    assert!(
        flagged.len() * 100 <= n,
        "more than 1% of gold solutions flagged: {:?}",
        &flagged[..flagged.len().min(10)]
    );
    assert!(computed * 100 >= 90 * n, "only {computed} of {n} gold solutions compute their answer");
    assert!(checked * 100 >= 90 * n, "only {checked} of {n} solutions had a checkable first annotation");
}
