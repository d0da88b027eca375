//! STaR (Zelikman et al. 2022): sample rationales, keep the ones that reach the right answer, and
//! where none does, rationalize: show the answer as a hint and keep a rationale that reaches it,
//! saved with the prompt *without* the hint.
//!
//! The policy parts ([`judge_completions`], [`select`]) are pure functions so that their tests are
//! plain equality checks; [`star_samples`] carries them out against a [`Generator`].

use flywheel_core::{Completion, GenerationRequest, Generator, Problem, Reporter, SamplingParams, TrainExample};
use flywheel_verify::{Answer, Verifier};
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

/// The rationale STaR keeps for a problem: its first correct sample that does not state its
/// answer before the working, if any.
pub fn select(records: &[SampleRecord]) -> Option<&SampleRecord> {
    records.iter().find(|r| r.correct && !r.answer_first)
}

/// The training example of a kept rationale: the task's plain prompt, never the hinted one.
pub fn training_example(task: &dyn Task, problem: &Problem, kept: &SampleRecord) -> TrainExample {
    TrainExample::single_turn(task.prompt(problem), kept.completion.clone())
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

/// Samples `config.samples_per_problem` rationales for every training problem, rationalizes the
/// unsolved ones when configured, and returns the samples and the training set.
pub fn star_samples(
    task: &dyn Task,
    generator: &mut dyn Generator,
    config: &StarConfig,
    seed: u64,
    reporter: &dyn Reporter,
) -> crate::Result<StarOutcome> {
    let problems = task.train_problems();
    let verifier = task.verifier();
    let params = SamplingParams {
        temperature: config.temperature,
        top_p: config.top_p,
        top_k: config.top_k,
        max_new_tokens: config.max_new_tokens,
        stop: Vec::new(),
        seed,
        ignore_eos: false,
    };
    let requests: Vec<GenerationRequest> =
        problems.iter().map(|p| GenerationRequest { prompt: task.prompt(p), n: config.samples_per_problem }).collect();
    let completions = generator.generate(&requests, &params, reporter)?;

    let mut outcome = StarOutcome::default();
    let mut kept: Vec<Option<TrainExample>> = vec![None; problems.len()];
    let mut unsolved = Vec::new();
    for (i, problem) in problems.iter().enumerate() {
        outcome.tokens += completions[i].iter().map(|c| c.tokens as u64).sum::<u64>();
        let records = judge_completions(&verifier, problem, &requests[i].prompt, &completions[i], false);
        match select(&records) {
            Some(r) => {
                kept[i] = Some(training_example(task, problem, r));
                outcome.solved += 1;
            }
            None => unsolved.push(i),
        }
        outcome.samples.extend(records);
    }

    if config.rationalization && !unsolved.is_empty() {
        let requests: Vec<GenerationRequest> = unsolved
            .iter()
            .map(|&i| GenerationRequest { prompt: task.hinted_prompt(&problems[i]), n: config.rationalization_samples })
            .collect();
        let params = SamplingParams { seed: seed ^ 0x5ea1_ed0f_f1ce, ..params };
        let completions = generator.generate(&requests, &params, reporter)?;
        for (j, &i) in unsolved.iter().enumerate() {
            outcome.tokens += completions[j].iter().map(|c| c.tokens as u64).sum::<u64>();
            let records = judge_completions(&verifier, &problems[i], &requests[j].prompt, &completions[j], true);
            if let Some(r) = select(&records) {
                kept[i] = Some(training_example(task, &problems[i], r));
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
    use flywheel_core::FinishReason;

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
        assert_eq!(select(&records).map(|r| r.completion.as_str()), Some("x\nA:1134"));
        assert_eq!(select(&records[..2]), None);
    }

    #[test]
    fn answers_stated_before_the_working_are_not_kept() {
        let v = Verifier::new(flywheel_verify::Format::Auto);
        let p = Problem { id: "p".into(), question: "q".into(), answer: "26".into(), bucket: String::new() };
        let texts = [
            "The answer is 26. Here's a brief calculation: 33 x 7 = 216.",
            "The answer is 26.\nBecause 20 + 6 = 26.",
            "20 + 6 = 26.\nThe answer is 26.",
            "The answer is 26.",
        ];
        let records = judge_completions(&v, &p, "q", &texts.map(completion), true);
        assert!(records.iter().all(|r| r.correct));
        assert_eq!(records.iter().map(|r| r.answer_first).collect::<Vec<_>>(), [true, true, false, false]);
        assert_eq!(select(&records).map(|r| r.completion.as_str()), Some(texts[2]));
        assert_eq!(select(&records[..2]), None);
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
        let kept = select(&records).expect("a correct rationale");
        assert!(kept.rationalized && kept.prompt.contains("1134"));
        let example = training_example(&task, &p, kept);
        assert_eq!(example.messages[0].content, "345+789\n");
        assert!(!example.messages.iter().any(|m| m.content.contains('|')));
        assert_eq!(example.messages[1].content, kept.completion);
    }
}
