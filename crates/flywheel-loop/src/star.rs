//! STaR (Zelikman et al. 2022): sample rationales, keep the ones that reach the right answer, and
//! where none does, rationalize: show the answer as a hint and keep a rationale that reaches it,
//! saved with the prompt *without* the hint.
//!
//! The policy parts ([`judge_completions`], [`select`]) are pure functions so that their tests are
//! plain equality checks; [`star_samples`] carries them out against a [`Generator`].

use flywheel_core::{Completion, GenerationRequest, Generator, Problem, Reporter, SamplingParams, TrainExample};
use flywheel_verify::{arithmetic, Answer, Number, Verifier};
use serde::{Deserialize, Serialize};

use crate::config::StarConfig;
use crate::Task;

/// One sampled completion and its verdict: a line of `samples.jsonl`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleRecord {
    /// The problem sampled.
    pub problem_id: String,
    /// The problem's bucket (digit length for addition).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bucket: String,
    /// The prompt the model saw (hinted when `rationalized`).
    pub prompt: String,
    /// What the model wrote.
    pub completion: String,
    /// The answer the verifier found, if any.
    pub extracted: Option<String>,
    /// Whether the answer is right.
    pub correct: bool,
    /// Whether this was a rationalization attempt (answer shown as a hint).
    pub rationalized: bool,
    /// Whether the completion states its answer before any working (see [`answers_first`]); such
    /// a sample is never kept, right or not.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub answer_first: bool,
    /// The first equation the completion writes out that does not hold (`8 * 4 = 24`), if any; with
    /// `check-arithmetic` such a sample is not kept (see [`flywheel_verify::arithmetic`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub false_equation: Option<String>,
    /// Whether an equation of the completion that holds ends in its extracted answer: the answer is
    /// worked out, not just stated; with `check-arithmetic` a sample without this is not kept.
    #[serde(default)]
    pub answer_computed: bool,
}

/// Verdicts on the completions of one problem.
pub fn judge_completions(
    verifier: &Verifier,
    problem: &Problem,
    prompt: &str,
    completions: &[Completion],
    rationalized: bool,
) -> Vec<SampleRecord> {
    let gold = Answer::parse(&problem.answer);
    completions
        .iter()
        .map(|c| {
            let verdict = verifier.judge_parsed(&c.text, &gold);
            SampleRecord {
                problem_id: problem.id.clone(),
                bucket: problem.bucket.clone(),
                prompt: prompt.to_owned(),
                completion: c.text.clone(),
                extracted: verdict.extracted.map(str::to_owned),
                correct: verdict.correct,
                rationalized,
                answer_first: answers_first(verifier, &c.text),
                false_equation: arithmetic::first_false(&c.text).map(|e| e.text.to_owned()),
                answer_computed: verdict
                    .extracted
                    .and_then(Number::parse)
                    .is_some_and(|n| arithmetic::computes(&c.text, n.to_f64())),
            }
        })
        .collect()
}

/// Whether `completion` states a final answer in its first sentence and then goes on: an answer
/// put before any working, which the text after it can only justify. Rationalization invites
/// exactly this (the hint is parroted: "The answer is 26. Here's a brief calculation: 33 x 7 =
/// 216."), and a model trained on such samples learns to open every answer with a guess: in our
/// first SmolLM2 run, 18 of 36 kept rationalizations did, and after training 199 of 200 held-out
/// answers opened with "The answer is" and accuracy fell from 5.5% to 4.5%. A completion that is
/// only the answer sentence is not affected.
pub fn answers_first(verifier: &Verifier, completion: &str) -> bool {
    let text = completion.trim_start();
    let line = text.split('\n').next().unwrap_or("");
    let sentence = match line.find(". ") {
        Some(end) => &line[..=end],
        None => line,
    };
    sentence.len() < text.trim_end().len() && verifier.extract(sentence).is_some()
}

/// Which correct samples STaR keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepPolicy {
    /// Also require every written-out equation to hold, and one of them to compute the answer.
    pub check_arithmetic: bool,
    /// Most samples kept per problem.
    pub per_problem: usize,
}

impl KeepPolicy {
    /// STaR's own policy: the first correct sample, arithmetic unchecked.
    pub const FIRST_CORRECT: KeepPolicy = KeepPolicy { check_arithmetic: false, per_problem: 1 };

    /// The policy a config asks for.
    pub fn of(config: &StarConfig) -> Self {
        Self { check_arithmetic: config.check_arithmetic, per_problem: config.keep_per_problem }
    }

    /// Whether `record` may be kept at all.
    fn admits(&self, record: &SampleRecord) -> bool {
        let sound = record.false_equation.is_none() && record.answer_computed;
        record.correct && !record.answer_first && (sound || !self.check_arithmetic)
    }
}

/// The rationales STaR keeps for a problem: its correct samples that do not state their answer
/// before the working (and, when checked, whose arithmetic holds and computes the answer), distinct
/// texts in sampling order, at most `policy.per_problem`.
pub fn select(records: &[SampleRecord], policy: KeepPolicy) -> Vec<&SampleRecord> {
    let mut kept: Vec<&SampleRecord> = Vec::new();
    for r in records.iter().filter(|r| policy.admits(r)) {
        if kept.len() == policy.per_problem {
            break;
        }
        if !kept.iter().any(|k| k.completion.trim() == r.completion.trim()) {
            kept.push(r);
        }
    }
    kept
}

/// The training example of a kept rationale: the task's plain prompt, never the hinted one.
pub fn training_example(task: &dyn Task, problem: &Problem, kept: &SampleRecord) -> TrainExample {
    TrainExample::single_turn(task.prompt(problem), kept.completion.clone())
}

/// The training examples of the rationales `policy` keeps among a problem's `records`.
fn kept_examples(
    task: &dyn Task,
    problem: &Problem,
    records: &[SampleRecord],
    policy: KeepPolicy,
) -> Vec<TrainExample> {
    select(records, policy).into_iter().map(|r| training_example(task, problem, r)).collect()
}

/// What one STaR sampling phase produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StarOutcome {
    /// Every sample, in problem order, rationalization attempts after the plain ones.
    pub samples: Vec<SampleRecord>,
    /// The iteration's training set, in problem order.
    pub train: Vec<TrainExample>,
    /// Problems solved without a hint.
    pub solved: usize,
    /// Problems solved only through rationalization.
    pub rationalized: usize,
    /// Tokens generated.
    pub tokens: u64,
}

/// Samples `config.samples_per_problem` rationales for every training problem (after the task's
/// worked examples when `config.few_shot`), rationalizes the unsolved ones when configured, and
/// returns the samples and the training set.
pub fn star_samples(
    task: &dyn Task,
    generator: &mut dyn Generator,
    config: &StarConfig,
    seed: u64,
    reporter: &dyn Reporter,
) -> crate::Result<StarOutcome> {
    let problems = task.train_problems();
    let verifier = task.verifier();
    let policy = KeepPolicy::of(config);
    let context = if config.few_shot { task.few_shot() } else { Vec::new() };
    let params = SamplingParams {
        temperature: config.temperature,
        top_p: config.top_p,
        top_k: config.top_k,
        max_new_tokens: config.max_new_tokens,
        stop: Vec::new(),
        seed,
        ignore_eos: false,
    };
    let requests: Vec<GenerationRequest> = problems
        .iter()
        .map(|p| GenerationRequest::new(task.prompt(p), config.samples_per_problem).with_context(context.clone()))
        .collect();
    let completions = generator.generate(&requests, &params, reporter)?;

    let mut outcome = StarOutcome::default();
    let mut kept: Vec<Vec<TrainExample>> = vec![Vec::new(); problems.len()];
    let mut unsolved = Vec::new();
    for (i, problem) in problems.iter().enumerate() {
        outcome.tokens += completions[i].iter().map(|c| c.tokens as u64).sum::<u64>();
        let records = judge_completions(&verifier, problem, &requests[i].prompt, &completions[i], false);
        kept[i] = kept_examples(task, problem, &records, policy);
        if kept[i].is_empty() {
            unsolved.push(i);
        } else {
            outcome.solved += 1;
        }
        outcome.samples.extend(records);
    }

    if config.rationalization && !unsolved.is_empty() {
        let requests: Vec<GenerationRequest> = unsolved
            .iter()
            .map(|&i| {
                GenerationRequest::new(task.hinted_prompt(&problems[i]), config.rationalization_samples)
                    .with_context(context.clone())
            })
            .collect();
        let params = SamplingParams { seed: seed ^ 0x5ea1_ed0f_f1ce, ..params };
        let completions = generator.generate(&requests, &params, reporter)?;
        for (j, &i) in unsolved.iter().enumerate() {
            outcome.tokens += completions[j].iter().map(|c| c.tokens as u64).sum::<u64>();
            let records = judge_completions(&verifier, &problems[i], &requests[j].prompt, &completions[j], true);
            kept[i] = kept_examples(task, &problems[i], &records, policy);
            if !kept[i].is_empty() {
                outcome.rationalized += 1;
            }
            outcome.samples.extend(records);
        }
    }
    outcome.train = kept.into_iter().flatten().collect();
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use flywheel_core::{FinishReason, Role};

    use super::*;
    use crate::config::AdditionConfig;
    use crate::tasks::addition::{scratchpad, Addition};

    fn completion(text: &str) -> Completion {
        Completion { text: text.to_owned(), tokens: text.len(), finish: FinishReason::Stop }
    }

    fn problem() -> Problem {
        Problem { id: "p".into(), question: "345+789".into(), answer: "1134".into(), bucket: "3".into() }
    }

    #[test]
    fn select_keeps_the_first_correct_sample() {
        let v = Verifier::new(flywheel_verify::Format::FinalLine);
        let texts = ["A:1133", "A:1134 wrong? no: ok", "x\nA:1134", "A:1134"];
        let records = judge_completions(&v, &problem(), "345+789\n", &texts.map(completion), false);
        assert_eq!(records.iter().map(|r| r.correct).collect::<Vec<_>>(), [false, false, true, true]);
        let first =
            |records: &[SampleRecord]| select(records, KeepPolicy::FIRST_CORRECT).first().map(|r| r.completion.clone());
        assert_eq!(first(&records).as_deref(), Some("x\nA:1134"));
        assert_eq!(first(&records[..2]), None);
    }

    /// Verdicts on `texts` as completions of a chat problem whose answer is `answer`.
    fn judge_chat(answer: &str, texts: &[&str], rationalized: bool) -> Vec<SampleRecord> {
        let v = Verifier::new(flywheel_verify::Format::Auto);
        let p = Problem { id: "p".into(), question: "q".into(), answer: answer.into(), bucket: String::new() };
        let completions: Vec<Completion> = texts.iter().map(|t| completion(t)).collect();
        judge_completions(&v, &p, "q", &completions, rationalized)
    }

    #[test]
    fn answers_stated_before_the_working_are_not_kept() {
        let texts = [
            "The answer is 26. Here's a brief calculation: 33 x 7 = 216.",
            "The answer is 26.\nBecause 20 + 6 = 26.",
            "20 + 6 = 26.\nThe answer is 26.",
            "The answer is 26.",
        ];
        let records = judge_chat("26", &texts, true);
        assert!(records.iter().all(|r| r.correct));
        assert_eq!(records.iter().map(|r| r.answer_first).collect::<Vec<_>>(), [true, true, false, false]);
        let kept = select(&records, KeepPolicy::FIRST_CORRECT);
        assert_eq!(kept.iter().map(|r| r.completion.as_str()).collect::<Vec<_>>(), [texts[2]]);
        assert!(select(&records[..2], KeepPolicy::FIRST_CORRECT).is_empty());
        // The addition scratchpad never opens with its answer line.
        let add = Verifier::new(flywheel_verify::Format::FinalLine);
        for (a, b) in [(3, 4), (9, 9), (345, 789)] {
            assert!(!answers_first(&add, &scratchpad(a, b)), "{a}+{b}");
        }
    }

    #[test]
    fn rationalized_examples_are_saved_with_the_plain_prompt() {
        let config = AdditionConfig {
            max_digits: 3,
            seed_examples: vec![1, 1, 1],
            seed_hinted_fraction: 0.0,
            train_per_length: 1,
            eval_per_length: 1,
        };
        let task = Addition::new(&config, 1);
        let p = problem();
        let hinted = task.hinted_prompt(&p);
        assert_eq!(hinted, "345+789|1134\n");
        let v = task.verifier();
        let records = judge_completions(&v, &p, &hinted, &[completion(&scratchpad(345, 789))], true);
        let kept = select(&records, KeepPolicy::FIRST_CORRECT)[0];
        assert!(kept.rationalized && kept.prompt.contains("1134"));
        let example = training_example(&task, &p, kept);
        assert_eq!(example.messages[0].content, "345+789\n");
        assert!(!example.messages.iter().any(|m| m.content.contains('|')));
        assert_eq!(example.messages[1].content, kept.completion);
    }

    #[test]
    fn keep_policy_checks_arithmetic_and_keeps_distinct_samples_up_to_the_cap() {
        let texts = [
            "8 * 4 = 24.\n24 + 16 = 40.\nThe answer is 40.",
            "8 * 4 = 32.\n32 + 8 = 40.\nThe answer is 40.",
            "8 * 4 = 32.\n32 + 8 = 40.\nThe answer is 40.\n",
            "8 * 5 = 40.\nThe answer is 40.",
            "5 * 8 = 40.\nThe answer is 40.",
            "Eight fours and eight more make forty.\nThe answer is 40.",
        ];
        let records = judge_chat("40", &texts, false);
        assert!(records.iter().all(|r| r.correct));
        assert_eq!(records[0].false_equation.as_deref(), Some("8 * 4 = 24"));
        assert!(records[1..].iter().all(|r| r.false_equation.is_none()));
        assert_eq!(
            records.iter().map(|r| r.answer_computed).collect::<Vec<_>>(),
            [true, true, true, true, true, false]
        );
        let kept = |check_arithmetic, per_problem| {
            select(&records, KeepPolicy { check_arithmetic, per_problem })
                .iter()
                .map(|r| r.completion.as_str())
                .collect::<Vec<_>>()
        };
        assert_eq!(kept(false, 1), [texts[0]]);
        assert_eq!(kept(true, 1), [texts[1]]);
        // The third text repeats the second (up to whitespace): not a second way to the answer.
        assert_eq!(kept(true, 3), [texts[1], texts[3], texts[4]]);
        // Stated, not computed: kept only when the arithmetic is not checked.
        assert_eq!(kept(true, 9), [texts[1], texts[3], texts[4]]);
        assert_eq!(kept(false, 9), [texts[0], texts[1], texts[3], texts[4], texts[5]]);
        assert_eq!(kept(false, 2), [texts[0], texts[1]]);
    }

    /// Answers every request with its own context length in a correct rationale, and records the
    /// requests it saw.
    #[derive(Default)]
    struct Recorder {
        requests: Vec<GenerationRequest>,
    }

    impl Generator for Recorder {
        fn generate(
            &mut self,
            requests: &[GenerationRequest],
            _: &SamplingParams,
            _: &dyn Reporter,
        ) -> flywheel_core::Result<Vec<Vec<Completion>>> {
            self.requests.extend_from_slice(requests);
            Ok(requests.iter().map(|r| vec![completion(&format!("{} turns.", r.context.len())); r.n]).collect())
        }
    }

    #[test]
    fn few_shot_examples_are_shown_when_sampling_but_never_saved() {
        let task_config = crate::config::ArithWordConfig {
            train_problems: 3,
            eval_problems: 2,
            two_step_fraction: 0.5,
            max_operand: 100,
            last_number_fallback: false,
            instruction: None,
        };
        let task = crate::tasks::ChatProblems::arith_word(&task_config, 7).unwrap();
        let shots = task.few_shot();
        assert_eq!(shots.len(), 8);
        assert!(shots.iter().enumerate().all(|(i, m)| m.role == if i % 2 == 0 { Role::User } else { Role::Assistant }));
        assert!(shots[0].content.ends_with(crate::tasks::DEFAULT_INSTRUCTION));
        // Every worked example is right by the task's own verifier and arithmetic check.
        for pair in shots.chunks(2) {
            assert!(task.verifier().extract(&pair[1].content).is_some(), "{}", pair[1].content);
            assert!(arithmetic::first_false(&pair[1].content).is_none(), "{}", pair[1].content);
        }
        let config: crate::config::StarConfig = toml::from_str(
            "samples-per-problem = 2\ntemperature = 0.7\nmax-new-tokens = 8\nrationalization = true\nfew-shot = true",
        )
        .unwrap();
        let mut generator = Recorder::default();
        let outcome = star_samples(&task, &mut generator, &config, 1, &flywheel_core::NullReporter).unwrap();
        // Nothing is solved, so each problem is sampled twice: plainly, then with the hint.
        assert_eq!(generator.requests.len(), 6);
        assert!(generator.requests.iter().all(|r| r.context == shots));
        assert!(outcome.train.is_empty());
        let plain: crate::config::StarConfig =
            toml::from_str("samples-per-problem = 2\ntemperature = 0.7\nmax-new-tokens = 8\nrationalization = false")
                .unwrap();
        let mut generator = Recorder::default();
        star_samples(&task, &mut generator, &plain, 1, &flywheel_core::NullReporter).unwrap();
        assert!(generator.requests.iter().all(|r| r.context.is_empty()));
    }
}
