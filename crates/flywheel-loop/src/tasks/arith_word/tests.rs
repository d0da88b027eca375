//! Tests of the arithmetic word problems: answers, disjoint splits, buckets, prompts and verdicts.

use std::collections::HashMap;

use super::*;
use crate::task::check_disjoint;
use crate::tasks::DEFAULT_INSTRUCTION;
use crate::Task;

fn config(train: usize, eval: usize) -> ArithWordConfig {
    ArithWordConfig {
        train_problems: train,
        eval_problems: eval,
        two_step_fraction: 0.5,
        max_operand: 100,
        last_number_fallback: false,
        instruction: None,
        held_out_stories: 0,
    }
}

/// The answer of `shape` over `n`, recomputed in signed arithmetic; `None` where a division
/// is not exact.
fn recompute(shape: Shape, n: [u64; 3]) -> Option<i64> {
    let [a, b, c] = n.map(|x| i64::try_from(x).expect("small"));
    let exact = |x: i64, y: i64| (y != 0 && x % y == 0).then(|| x / y);
    Some(match shape {
        Shape::Add => a + b,
        Shape::Sub => a - b,
        Shape::Mul => a * b,
        Shape::Div => exact(a, b)?,
        Shape::AddAdd => a + b + c,
        Shape::AddSub => a + b - c,
        Shape::SubSub => a - b - c,
        Shape::MulAdd => a * b + c,
        Shape::MulSub => a * b - c,
        Shape::SubMul => a - b * c,
        Shape::AddMul => (a + b) * c,
        Shape::DivAdd => exact(a, b)? + c,
        Shape::SubDiv => exact(a - b, c)?,
    })
}

/// The numbers written in `text`, in order.
fn numbers_in(text: &str) -> Vec<u64> {
    text.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).map(|s| s.parse().expect("digits")).collect()
}

#[test]
fn every_answer_is_recomputed_from_the_numbers_the_question_states() {
    for max_operand in [10, 100, 300] {
        let config = ArithWordConfig { max_operand, ..config(1000, 300) };
        let (eval, train) = generate(&config, 3).expect("problems");
        for d in eval.iter().chain(&train) {
            let shape = TEMPLATES[d.key.template].shape;
            let arity = if shape.steps() == 1 { 2 } else { 3 };
            assert_eq!(numbers_in(&d.problem.question), d.key.numbers[..arity], "{}", d.problem.question);
            let answer = recompute(shape, d.key.numbers).unwrap_or_else(|| panic!("inexact: {:?}", d.key));
            assert!((2..1000).contains(&answer), "{answer}: {}", d.problem.question);
            assert_eq!(d.problem.answer, answer.to_string(), "{}", d.problem.question);
            assert!(d.key.numbers[..arity].iter().all(|&x| x >= 2), "{}", d.problem.question);
        }
    }
}

#[test]
fn templates_are_many_and_use_each_number_once_in_order() {
    assert!(TEMPLATES.len() >= 16);
    for steps in [1, 2] {
        assert!(TEMPLATES.iter().filter(|t| t.shape.steps() == steps).count() >= 8);
    }
    let fewest = [1, 2].map(|steps| TEMPLATES.iter().filter(|t| t.shape.steps() == steps).count());
    assert_eq!(MAX_HELD_OUT_STORIES, fewest.into_iter().min().unwrap() - 1, "every bucket keeps one story");
    for t in TEMPLATES {
        let marks: Vec<usize> = ["{a}", "{b}", "{c}"].iter().filter_map(|m| t.text.find(m)).collect();
        assert_eq!(marks.len(), if t.shape.steps() == 1 { 2 } else { 3 }, "{}", t.text);
        assert!(marks.windows(2).all(|w| w[0] < w[1]), "{}", t.text);
        assert!(!t.text.contains(|c: char| c.is_ascii_digit()), "{}", t.text);
        assert!(t.text.matches("{a}").count() == 1 && t.text.matches("{b}").count() == 1, "{}", t.text);
    }
}

#[test]
fn splits_share_no_question_and_no_story_with_the_same_numbers() {
    // A small max-operand makes reworded duplicates (same story and numbers, another name or
    // object) likely, so this fails if the training draw only compares question texts.
    let config = ArithWordConfig { max_operand: 10, ..config(1500, 400) };
    let (eval, train) = generate(&config, 11).expect("problems");
    let eval_keys: HashSet<Key> = eval.iter().map(|d| d.key).collect();
    assert!(train.iter().all(|d| !eval_keys.contains(&d.key)));
    for split in [&eval, &train] {
        let keys: HashSet<Key> = split.iter().map(|d| d.key).collect();
        let questions: HashSet<&str> = split.iter().map(|d| d.problem.question.as_str()).collect();
        let ids: HashSet<&str> = split.iter().map(|d| d.problem.id.as_str()).collect();
        assert_eq!((keys.len(), questions.len(), ids.len()), (split.len(), split.len(), split.len()));
    }
    let task = ChatProblems::arith_word(&config, 11).expect("task");
    assert!(check_disjoint(&task).is_empty());
    assert_eq!(task.eval_problems()[17].id, "aw-eval-00017");
    assert_eq!(task.train_problems()[42].id, "aw-train-00042");
}

#[test]
fn splits_are_reproducible_from_the_seed_and_held_out_split_ignores_the_training_count() {
    let a = ChatProblems::arith_word(&config(300, 200), 5).expect("a");
    let b = ChatProblems::arith_word(&config(300, 200), 5).expect("b");
    let c = ChatProblems::arith_word(&config(300, 200), 6).expect("c");
    let d = ChatProblems::arith_word(&config(900, 200), 5).expect("d");
    assert_eq!(a.eval_problems(), b.eval_problems());
    assert_eq!(a.train_problems(), b.train_problems());
    assert_ne!(a.eval_problems(), c.eval_problems());
    assert_ne!(a.train_problems(), c.train_problems());
    assert_eq!(a.eval_problems(), d.eval_problems());
}

#[test]
fn buckets_follow_the_two_step_fraction() {
    for (fraction, two_step) in [(0.5, 100), (0.3, 60), (0.0, 0), (1.0, 200)] {
        let task = ChatProblems::arith_word(&ArithWordConfig { two_step_fraction: fraction, ..config(50, 200) }, 1)
            .expect("task");
        let mut buckets: HashMap<&str, usize> = HashMap::new();
        for p in task.eval_problems() {
            *buckets.entry(p.bucket.as_str()).or_default() += 1;
        }
        assert_eq!(buckets.get("2-step").copied().unwrap_or(0), two_step, "{fraction}");
        assert_eq!(buckets.get("1-step").copied().unwrap_or(0), 200 - two_step, "{fraction}");
    }
    // Both buckets are mixed through the split, not one after the other.
    let task = ChatProblems::arith_word(&config(50, 200), 1).expect("task");
    assert!(task.eval_problems()[..50].iter().any(|p| p.bucket == "1-step"));
    assert!(task.eval_problems()[..50].iter().any(|p| p.bucket == "2-step"));
}

#[test]
fn the_hint_is_only_in_the_hinted_prompt() {
    let task = ChatProblems::arith_word(&config(200, 200), 2).expect("task");
    for p in task.train_problems().iter().chain(task.eval_problems()) {
        let prompt = task.prompt(p);
        assert_eq!(prompt, format!("{}\n{DEFAULT_INSTRUCTION}", p.question));
        assert!(!prompt.contains("Hint"), "{prompt}");
        let hinted = task.hinted_prompt(p);
        assert_eq!(hinted, format!("{prompt}\nHint: the answer is {}. Explain how to get it.", p.answer));
    }
    let custom = ChatProblems::arith_word(&ArithWordConfig { instruction: Some("Think.".into()), ..config(5, 5) }, 2)
        .expect("task");
    let p = &custom.eval_problems()[0];
    assert_eq!(custom.prompt(p), format!("{}\nThink.", p.question));
    let bare = ChatProblems::arith_word(&ArithWordConfig { instruction: Some(String::new()), ..config(5, 5) }, 2)
        .expect("task");
    assert_eq!(bare.prompt(p), p.question);
}

#[test]
fn verifier_wants_the_exact_number_and_falls_back_only_when_asked() {
    let strict = ChatProblems::arith_word(&config(5, 5), 2).expect("task").verifier();
    assert!(strict.judge("6 packs of 7 is 42. The answer is 42.", "42").correct);
    assert!(!strict.judge("6 packs of 7 is 42. The answer is 421.", "42").correct);
    assert!(!strict.judge("6 packs of 7 is 42", "42").correct);
    let lenient = ChatProblems::arith_word(&ArithWordConfig { last_number_fallback: true, ..config(5, 5) }, 2)
        .expect("task")
        .verifier();
    assert!(lenient.judge("6 packs of 7 is 42", "42").correct);
    assert!(!lenient.judge("6 packs of 7 is 42. The answer is 421.", "42").correct);
}

#[test]
fn too_many_problems_for_the_operand_range_is_an_error_naming_the_task() {
    let config = ArithWordConfig { max_operand: 10, two_step_fraction: 0.0, ..config(10, 5000) };
    let err = ChatProblems::arith_word(&config, 1).expect_err("only about 1200 one-step problems exist");
    let message = err.to_string();
    assert!(message.starts_with("task arith-word:") && message.contains("max-operand"), "{message}");
}

#[test]
fn no_seed_set_and_an_alphabet_covering_prompts_and_answers() {
    let task = ChatProblems::arith_word(&config(50, 50), 2).expect("task");
    assert!(task.seed_examples().is_empty());
    let alphabet = task.alphabet();
    for p in task.eval_problems() {
        assert!(task.hinted_prompt(p).chars().all(|c| alphabet.contains(c)), "{}", p.question);
    }
    assert!(alphabet.contains('\n') && ('0'..='9').all(|d| alphabet.contains(d)));
}

#[test]
fn withheld_stories_are_never_trained_on_and_have_their_own_buckets() {
    let config = ArithWordConfig { held_out_stories: 3, ..config(400, 100) };
    let (eval, train) = generate(&config, 5).expect("problems");
    let new: Vec<&Drawn> = eval.iter().filter(|d| d.problem.bucket.starts_with("new-story")).collect();
    let familiar: Vec<&Drawn> = eval.iter().filter(|d| !d.problem.bucket.starts_with("new-story")).collect();
    assert_eq!((new.len(), familiar.len()), (100, 100));
    let stories = |drawn: &[&Drawn]| drawn.iter().map(|d| d.key.template).collect::<HashSet<usize>>();
    let withheld = stories(&new);
    assert_eq!(withheld.len(), 6, "3 stories of each bucket");
    assert!(withheld.iter().filter(|&&t| TEMPLATES[t].shape.steps() == 1).count() == 3);
    let trained = stories(&train.iter().collect::<Vec<_>>());
    assert!(trained.is_disjoint(&withheld), "a withheld story was trained on");
    assert!(stories(&familiar).is_disjoint(&withheld));
    assert!(new.iter().all(|d| d.problem.id.starts_with("aw-eval-new-")));
    let buckets: HashSet<&str> = new.iter().map(|d| d.problem.bucket.as_str()).collect();
    assert_eq!(buckets, HashSet::from(["new-story 1-step", "new-story 2-step"]));
}

#[test]
fn every_training_problem_has_a_reference_solution_whose_arithmetic_holds() {
    let task = ChatProblems::arith_word(&config(300, 50), 3).expect("task");
    let verifier = task.verifier();
    for p in task.train_problems() {
        let solution = task.reference_solution(p).unwrap_or_else(|| panic!("{}: no reference", p.id));
        assert!(verifier.judge(&solution, &p.answer).correct, "{}: {solution}", p.question);
        assert_eq!(flywheel_verify::arithmetic::first_false(&solution).map(|e| e.text.to_owned()), None, "{solution}");
        let steps = if p.bucket == "2-step" { 2 } else { 1 };
        assert_eq!(solution.lines().count(), steps + 1, "{solution}");
    }
    assert!(task.eval_problems().iter().all(|p| task.reference_solution(p).is_none()), "held-out problems have none");
}

#[test]
fn held_out_references_are_right_and_the_natural_set_spreads_over_the_split() {
    let mut c = config(100, 40);
    c.held_out_stories = 3;
    let task = ChatProblems::arith_word(&c, 5).expect("task");
    let verifier = task.verifier();
    for p in task.eval_problems() {
        let solution = task.heldout_reference(p).unwrap_or_else(|| panic!("{}: no held-out reference", p.id));
        assert!(verifier.judge(&solution, &p.answer).correct, "{}: {solution}", p.question);
    }
    assert!(task.train_problems().iter().all(|p| task.heldout_reference(p).is_none()));
    let natural = crate::quality::natural_texts(&task, 10);
    assert_eq!(natural.len(), 10);
    let eval = task.eval_problems();
    let posed: Vec<usize> = natural
        .iter()
        .map(|e| eval.iter().position(|p| task.prompt(p) == e.messages[0].content).expect("a held-out problem"))
        .collect();
    assert_eq!(posed, (0..10).map(|i| i * eval.len() / 10).collect::<Vec<_>>(), "evenly spread");
    let buckets: HashSet<&str> = posed.iter().map(|&i| eval[i].bucket.as_str()).collect();
    assert_eq!(buckets.len(), 4, "familiar and new stories, one and two steps: {buckets:?}");
    assert_eq!(crate::quality::natural_texts(&task, 10_000).len(), eval.len(), "at most the whole split");
}
