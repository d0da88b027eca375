//! n-digit addition with a digit-by-digit scratchpad, the arithmetic task of the STaR paper.
//!
//! A problem `345+789` is posed as the prompt `345+789\n`. A rationale works from the last digits
//! to the first, one line per column, rewriting what is left of each operand (the scratchpad of
//! Nye et al. 2021, in compact form), then states the answer:
//!
//! ```text
//! 34+78,4c1      5+9 = 14: write 4, carry 1; 34 and 78 are left
//! 3+7,34c1       4+8+1 = 13: write 3, carry 1
//! +,134c1        3+7+1 = 11: write 1, carry 1
//! A:1134         the carry and the digits written
//! ```
//!
//! Each line depends only on the line before it, so one skill (add the two digits before `+` and
//! `,`, plus the carry) serves every length; what grows with length is the copying. A hinted prompt
//! for rationalization shows the answer after a bar: `345+789|1134\n`.
//!
//! Both operands of an n-digit problem have exactly n digits (the first non-zero for n > 1), and the
//! problem's bucket is n. The held-out split is drawn first and the other sets exclude it (in either
//! operand order); at most a quarter of a length's possible problems are held out, so 1-digit
//! problems keep about half of their 100 for training.

use std::collections::HashSet;

use flywheel_core::{Problem, TrainExample};
use flywheel_verify::{Format, Verifier};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::config::AdditionConfig;
use crate::seeds;
use crate::Task;

/// The addition task: its splits and seed set, drawn from a seed.
#[derive(Debug, Clone)]
pub struct Addition {
    train: Vec<Problem>,
    eval: Vec<Problem>,
    seed_set: Vec<TrainExample>,
    /// Whether the seed set teaches judging (and the alphabet holds the verdict words).
    judges: bool,
}

impl Addition {
    /// Draws the held-out split, the seed set and the training problems for `config`.
    pub fn new(config: &AdditionConfig, seed: u64) -> Self {
        let mut rng = StdRng::seed_from_u64(seeds::derive(seed, "addition", 0));
        let mut eval = Vec::new();
        let mut train = Vec::new();
        let mut seed_set = Vec::new();
        for digits in 1..=config.max_digits {
            let space = problem_space(digits);
            let held_out = draw(&mut rng, digits, config.eval_per_length.min(space / 4), &HashSet::new());
            let excluded: HashSet<(u64, u64)> = held_out.iter().flat_map(|&(a, b)| [(a, b), (b, a)]).collect();
            let available = space - excluded.len().min(space);
            let seed_count = config.seed_examples[digits - 1].min(available);
            let seed_pairs = draw(&mut rng, digits, seed_count, &excluded);
            let train_pairs = draw(&mut rng, digits, config.train_per_length.min(available), &excluded);
            eval.extend(held_out.iter().enumerate().map(|(i, &(a, b))| problem("eval", digits, i, a, b)));
            train.extend(train_pairs.iter().enumerate().map(|(i, &(a, b))| problem("train", digits, i, a, b)));
            // Judging examples draw from a generator of their own, so that the rest of the seed set
            // is the same with or without them.
            let mut judge_rng = StdRng::seed_from_u64(seeds::derive(seed, "addition-judge", digits));
            for (i, &(a, b)) in seed_pairs.iter().enumerate() {
                seed_set.push(TrainExample::single_turn(prompt(a, b, None), scratchpad(a, b)));
                if (i as f64) < config.seed_hinted_fraction * seed_count as f64 {
                    seed_set.push(TrainExample::single_turn(prompt(a, b, Some(a + b)), scratchpad(a, b)));
                }
                if (i as f64) < config.seed_judge_fraction * seed_count as f64 {
                    let (pad, verdict) = if i % 2 == 0 {
                        (scratchpad(a, b), JUDGE_CORRECT)
                    } else {
                        let column = judge_rng.random_range(0..digits);
                        (flawed_scratchpad(a, b, column, judge_rng.random_range(1..10)), JUDGE_INCORRECT)
                    };
                    seed_set.push(TrainExample::single_turn(judge_prompt(&format!("{a}+{b}"), &pad), verdict));
                }
            }
        }
        Self { train, eval, seed_set, judges: config.seed_judge_fraction > 0.0 }
    }
}

/// The verdicts a judging seed example teaches.
const JUDGE_CORRECT: &str = "CORRECT";
const JUDGE_INCORRECT: &str = "INCORRECT";

/// `question`, the scratchpad to judge and a `?` line.
fn judge_prompt(question: &str, solution: &str) -> String {
    format!("{question}\n{}\n?\n", solution.trim())
}

impl Task for Addition {
    fn train_problems(&self) -> &[Problem] {
        &self.train
    }

    fn eval_problems(&self) -> &[Problem] {
        &self.eval
    }

    fn seed_examples(&self) -> Vec<TrainExample> {
        self.seed_set.clone()
    }

    fn prompt(&self, problem: &Problem) -> String {
        format!("{}\n", problem.question)
    }

    fn hinted_prompt(&self, problem: &Problem) -> String {
        format!("{}|{}\n", problem.question, problem.answer)
    }

    /// The question, the scratchpad and a `?` line; the seed set teaches the verdict when
    /// `seed-judge-fraction` is set.
    fn judge_prompt(&self, problem: &Problem, solution: &str) -> String {
        judge_prompt(&problem.question, solution)
    }

    /// The problem's scratchpad, as the seed set writes it.
    fn reference_solution(&self, problem: &Problem) -> Option<String> {
        let (a, b) = problem.question.split_once('+')?;
        Some(scratchpad(a.parse().ok()?, b.parse().ok()?))
    }

    /// The held-out problem's scratchpad, as the seed set would write it.
    fn heldout_reference(&self, problem: &Problem) -> Option<String> {
        self.reference_solution(problem)
    }

    /// The share of the scratchpad's lines (the answer line included) that are the right ones, in
    /// place: a graded reward that credits every column done right.
    fn process_score(&self, problem: &Problem, completion: &str, _extracted: Option<&str>) -> f64 {
        let Some((a, b)) = problem.question.split_once('+') else { return 0.0 };
        let (Ok(a), Ok(b)) = (a.parse::<u64>(), b.parse::<u64>()) else { return 0.0 };
        let truth = scratchpad(a, b);
        let (right, written): (Vec<&str>, Vec<&str>) =
            (truth.lines().collect(), completion.trim_end().lines().collect());
        let matching = right.iter().zip(&written).filter(|(r, w)| r == w).count();
        matching as f64 / right.len().max(written.len()) as f64
    }

    /// The plain prompt: the character-level model reads no critiques, so its revision is a new
    /// attempt (at self-play's revision temperature).
    fn revise_prompt(&self, problem: &Problem, _attempts: &[(&str, &str)]) -> String {
        self.prompt(problem)
    }

    fn verifier(&self) -> Verifier {
        Verifier::new(Format::FinalLine)
    }

    fn alphabet(&self) -> String {
        let base = "0123456789+,c\nA:|";
        if self.judges {
            format!("{base}?CORETIN")
        } else {
            base.to_owned()
        }
    }
}

/// The scratchpad rationale of `a + b`, ending in the answer line `A:{a+b}`.
pub fn scratchpad(a: u64, b: u64) -> String {
    let (mut left, mut right) = (a.to_string(), b.to_string());
    let mut written = String::new();
    let mut carry = 0;
    let mut out = String::new();
    while !left.is_empty() || !right.is_empty() {
        let da = left.pop().map_or(0, digit);
        let db = right.pop().map_or(0, digit);
        let sum = da + db + carry;
        written.insert(0, char::from(b'0' + (sum % 10) as u8));
        carry = sum / 10;
        out.push_str(&format!("{left}+{right},{written}c{carry}\n"));
    }
    let carry_digit = if carry == 1 { "1" } else { "" };
    out.push_str(&format!("A:{carry_digit}{written}"));
    out
}

/// The scratchpad of `a + b` with one slip: the digit written for `column` (0: the last digits) is
/// off by `delta` (1-9), and every later line copies the slip, as a model's own mistakes do.
pub fn flawed_scratchpad(a: u64, b: u64, column: usize, delta: u64) -> String {
    let (mut left, mut right) = (a.to_string(), b.to_string());
    let mut written = String::new();
    let mut carry = 0;
    let mut out = String::new();
    let mut index = 0;
    while !left.is_empty() || !right.is_empty() {
        let sum = left.pop().map_or(0, digit) + right.pop().map_or(0, digit) + carry;
        let slip = if index == column { delta } else { 0 };
        written.insert(0, char::from(b'0' + ((sum + slip) % 10) as u8));
        carry = sum / 10;
        out.push_str(&format!("{left}+{right},{written}c{carry}\n"));
        index += 1;
    }
    let carry_digit = if carry == 1 { "1" } else { "" };
    out.push_str(&format!("A:{carry_digit}{written}"));
    out
}

fn digit(c: char) -> u64 {
    u64::from(c.to_digit(10).expect("operands are decimal"))
}

fn prompt(a: u64, b: u64, hint: Option<u64>) -> String {
    match hint {
        Some(h) => format!("{a}+{b}|{h}\n"),
        None => format!("{a}+{b}\n"),
    }
}

fn problem(split: &str, digits: usize, index: usize, a: u64, b: u64) -> Problem {
    Problem {
        id: format!("{split}-add{digits}-{index:05}"),
        question: format!("{a}+{b}"),
        answer: (a + b).to_string(),
        bucket: digits.to_string(),
    }
}

/// Number of ordered operand pairs of `digits` digits each.
fn problem_space(digits: usize) -> usize {
    let count = if digits == 1 { 10 } else { 9 * 10usize.pow(digits as u32 - 1) };
    count.saturating_mul(count)
}

/// `count` distinct pairs of `digits`-digit operands, none in `excluded`, in draw order.
fn draw(rng: &mut StdRng, digits: usize, count: usize, excluded: &HashSet<(u64, u64)>) -> Vec<(u64, u64)> {
    let (lo, hi) = if digits == 1 { (0, 10) } else { (10u64.pow(digits as u32 - 1), 10u64.pow(digits as u32)) };
    let mut seen = HashSet::new();
    let mut pairs = Vec::with_capacity(count);
    while pairs.len() < count {
        let pair = (rng.random_range(lo..hi), rng.random_range(lo..hi));
        if !excluded.contains(&pair) && seen.insert(pair) {
            pairs.push(pair);
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AdditionConfig {
        AdditionConfig {
            max_digits: 5,
            seed_examples: vec![100, 200, 10, 10, 10],
            seed_hinted_fraction: 0.5,
            seed_judge_fraction: 0.0,
            train_per_length: 50,
            eval_per_length: 40,
        }
    }

    #[test]
    fn the_reference_solution_is_the_scratchpad() {
        let task = Addition::new(&config(), 1);
        let p = &task.train_problems()[0];
        let (a, b) = p.question.split_once('+').unwrap();
        assert_eq!(task.reference_solution(p), Some(scratchpad(a.parse().unwrap(), b.parse().unwrap())));
    }

    #[test]
    fn scratchpad_matches_the_documented_example() {
        assert_eq!(scratchpad(345, 789), "34+78,4c1\n3+7,34c1\n+,134c1\nA:1134");
        assert_eq!(scratchpad(3, 4), "+,7c0\nA:7");
    }

    #[test]
    fn every_scratchpad_is_judged_correct_and_its_answer_is_the_sum() {
        let task = Addition::new(&config(), 7);
        let verifier = task.verifier();
        for p in task.train_problems().iter().chain(task.eval_problems()) {
            let (a, b) = p.question.split_once('+').expect("a+b");
            let pad = scratchpad(a.parse().expect("a"), b.parse().expect("b"));
            assert!(verifier.judge(&pad, &p.answer).correct, "{}: {pad}", p.question);
        }
    }

    #[test]
    fn held_out_split_shares_no_problem_with_training_or_seed() {
        let task = Addition::new(&config(), 7);
        assert!(crate::task::check_disjoint(&task).is_empty());
        let eval: HashSet<String> = task.eval_problems().iter().map(|p| task.prompt(p)).collect();
        for example in task.seed_examples() {
            let prompt = &example.messages[0].content;
            let unhinted = prompt.split('|').next().expect("prompt").trim_end().to_owned() + "\n";
            assert!(!eval.contains(&unhinted), "seed example {prompt:?} is held out");
        }
        // 1-digit problems: at most a quarter of the 100 are held out.
        assert_eq!(task.eval_problems().iter().filter(|p| p.bucket == "1").count(), 25);
    }

    #[test]
    fn splits_are_reproducible_from_the_seed() {
        let a = Addition::new(&config(), 7);
        let b = Addition::new(&config(), 7);
        let c = Addition::new(&config(), 8);
        assert_eq!(a.eval_problems(), b.eval_problems());
        assert_eq!(a.seed_examples(), b.seed_examples());
        assert_ne!(a.eval_problems(), c.eval_problems());
    }

    #[test]
    fn half_of_the_seed_set_is_also_shown_with_a_hint() {
        let task = Addition::new(&config(), 7);
        let examples = task.seed_examples();
        let hinted = examples.iter().filter(|e| e.messages[0].content.contains('|')).count();
        // The 1-digit seed set is what the held-out split leaves of the 100 problems.
        let plain_one_digit = examples.iter().filter(|e| e.messages[0].content.len() == "3+4\n".len()).count();
        assert!(plain_one_digit > 40 && plain_one_digit < 100, "{plain_one_digit}");
        // ceil(count / 2) per length.
        assert_eq!(hinted, plain_one_digit.div_ceil(2) + 100 + 5 + 5 + 5);
    }

    #[test]
    fn judging_examples_leave_the_rest_of_the_seed_set_alone() {
        let plain = Addition::new(&config(), 7);
        let judging = Addition::new(&AdditionConfig { seed_judge_fraction: 0.5, ..config() }, 7);
        let is_judgement = |e: &TrainExample| e.messages[0].content.ends_with("?\n");
        let rest: Vec<TrainExample> = judging.seed_examples().into_iter().filter(|e| !is_judgement(e)).collect();
        assert_eq!(rest, plain.seed_examples());
        assert_eq!(plain.alphabet(), "0123456789+,c\nA:|");
        let judgements: Vec<TrainExample> = judging.seed_examples().into_iter().filter(is_judgement).collect();
        let verifier = judging.verifier();
        let (mut right, mut wrong) = (0usize, 0usize);
        for e in &judgements {
            let prompt = &e.messages[0].content;
            assert!(prompt.chars().all(|c| judging.alphabet().contains(c)), "{prompt:?}");
            assert!(e.messages[1].content.chars().all(|c| judging.alphabet().contains(c)));
            let (question, pad) = prompt.split_once('\n').expect("question line");
            let (a, b) = question.split_once('+').expect("a+b");
            let sum = a.parse::<u64>().expect("a") + b.parse::<u64>().expect("b");
            let pad = pad.strip_suffix("\n?\n").expect("? line");
            // The verdict taught is the truth: a flawed scratchpad's answer is wrong.
            let correct = verifier.judge(pad, &sum.to_string()).correct;
            assert_eq!(e.messages[1].content, if correct { "CORRECT" } else { "INCORRECT" }, "{prompt}");
            if correct {
                right += 1
            } else {
                wrong += 1
            }
        }
        assert!(right > 0 && wrong > 0 && right.abs_diff(wrong) <= 5, "{right} right, {wrong} wrong");
    }

    #[test]
    fn a_flawed_scratchpad_carries_its_slip_to_the_answer() {
        assert_eq!(flawed_scratchpad(345, 789, 1, 2), "34+78,4c1\n3+7,54c1\n+,154c1\nA:1154");
        assert_eq!(flawed_scratchpad(3, 4, 0, 9), "+,6c0\nA:6");
    }

    #[test]
    fn the_process_score_counts_right_scratchpad_lines() {
        let task = Addition::new(&config(), 7);
        let p = Problem { id: "p".into(), question: "345+789".into(), answer: "1134".into(), bucket: "3".into() };
        assert_eq!(task.process_score(&p, &scratchpad(345, 789), None), 1.0);
        // The slip in the second column spoils that line, the next and the answer: 1 of 4 right.
        assert_eq!(task.process_score(&p, &flawed_scratchpad(345, 789, 1, 2), None), 0.25);
        // An extra line counts against it.
        assert_eq!(task.process_score(&p, &format!("{}\nA:1", scratchpad(345, 789)), None), 0.8);
        assert_eq!(task.process_score(&p, "", None), 0.0);
    }
}
