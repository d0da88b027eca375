//! STaR (Zelikman et al. 2022): sample rationales, keep the ones that reach the right answer, and
//! where none does, rationalize: show the answer as a hint and keep a rationale that reaches it,
//! saved with the prompt *without* the hint.
//!
//! The policy part ([`select`]) is a pure function so that its tests are plain equality checks;
//! [`Star`] carries it out against the iteration's generator.

use flywheel_core::{GenerationRequest, Problem, TrainExample};

use super::{
    context, grow, sample_and_judge, sampling_params, training_example, Collected, Context, Strategy, StrategyStats,
    TrainingSet,
};
use crate::config::StarConfig;
use crate::records::SampleRecord;
use crate::Task;

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
    pub fn admits(&self, record: &SampleRecord) -> bool {
        let sound = record.false_equation.is_none() && record.answer_computed;
        record.correct && !record.answer_first && (sound || !self.check_arithmetic)
    }
}

/// The rationales STaR keeps for a problem: the indices of its correct samples that do not state
/// their answer before the working (and, when checked, whose arithmetic holds and computes the
/// answer), distinct texts in sampling order, at most `policy.per_problem`.
pub fn select(records: &[SampleRecord], policy: KeepPolicy) -> Vec<usize> {
    let mut kept: Vec<usize> = Vec::new();
    for (i, r) in records.iter().enumerate().filter(|(_, r)| policy.admits(r)) {
        if kept.len() == policy.per_problem {
            break;
        }
        if !kept.iter().any(|&k| records[k].completion.trim() == r.completion.trim()) {
            kept.push(i);
        }
    }
    kept
}

/// The training examples of the rationales `policy` keeps among a problem's `records`, whose
/// `kept` flags it sets.
fn keep(task: &dyn Task, problem: &Problem, records: &mut [SampleRecord], policy: KeepPolicy) -> Vec<TrainExample> {
    let kept: Vec<usize> = select(records, policy);
    kept.iter()
        .map(|&i| {
            records[i].kept = true;
            training_example(task, problem, &records[i])
        })
        .collect()
}

/// STaR as a [`Strategy`].
#[derive(Debug, Clone)]
pub struct Star {
    config: StarConfig,
}

impl Star {
    /// STaR with `config`.
    pub fn new(config: StarConfig) -> Self {
        Self { config }
    }
}

impl Strategy for Star {
    /// Samples `samples-per-problem` rationales for every training problem (after the task's
    /// worked examples when `few-shot`), rationalizes the unsolved ones when configured, and
    /// returns the samples and the training set, in problem order.
    fn collect(&mut self, cx: &mut Context<'_>) -> crate::Result<Collected> {
        let config = &self.config;
        let task = cx.task;
        let policy = KeepPolicy::of(config);
        let sampling = config.sampling();
        let (problems, mut records, mut tokens) = grow(cx, &sampling)?;

        let mut kept: Vec<Vec<TrainExample>> = vec![Vec::new(); problems.len()];
        let mut unsolved = Vec::new();
        let mut solved = 0;
        for (i, problem) in problems.iter().enumerate() {
            kept[i] = keep(task, problem, &mut records[i], policy);
            if kept[i].is_empty() {
                unsolved.push(i);
            } else {
                solved += 1;
            }
        }

        let mut rationalized = 0;
        let mut hinted_records = Vec::new();
        if config.rationalization && !unsolved.is_empty() {
            let shots = context(task, &sampling);
            let hinted: Vec<&Problem> = unsolved.iter().map(|&i| problems[i]).collect();
            let requests: Vec<GenerationRequest> = hinted
                .iter()
                .map(|p| {
                    GenerationRequest::new(task.hinted_prompt(p), config.rationalization_samples)
                        .with_context(shots.clone())
                })
                .collect();
            let params = sampling_params(&sampling, cx.seed ^ 0x5ea1_ed0f_f1ce);
            let (mut records, hinted_tokens) = sample_and_judge(cx, &hinted, &requests, &params, true)?;
            tokens += hinted_tokens;
            for (j, &i) in unsolved.iter().enumerate() {
                kept[i] = keep(task, problems[i], &mut records[j], policy);
                if !kept[i].is_empty() {
                    rationalized += 1;
                }
            }
            hinted_records = records;
        }
        Ok(Collected {
            samples: records.into_iter().chain(hinted_records).flatten().collect(),
            sets: vec![TrainingSet { label: "correct".into(), examples: kept.into_iter().flatten().collect() }],
            tokens,
            stats: StrategyStats::Star { solved, rationalized },
        })
    }
}

#[cfg(test)]
mod tests {
    use flywheel_core::{Completion, NullReporter, Role};
    use flywheel_verify::{arithmetic, Verifier};

    use super::*;
    use crate::config::AdditionConfig;
    use crate::records::{answers_first, judge_completions};
    use crate::strategy::testing::{completion, Recorder};
    use crate::tasks::addition::{scratchpad, Addition};

    fn problem() -> Problem {
        Problem { id: "p".into(), question: "345+789".into(), answer: "1134".into(), bucket: "3".into() }
    }

    #[test]
    fn select_keeps_the_first_correct_sample() {
        let v = Verifier::new(flywheel_verify::Format::FinalLine);
        let texts = ["A:1133", "A:1134 wrong? no: ok", "x\nA:1134", "A:1134"];
        let records = judge_completions(&v, &problem(), "345+789\n", &texts.map(completion), false);
        assert_eq!(records.iter().map(|r| r.correct).collect::<Vec<_>>(), [false, false, true, true]);
        let first = |records: &[SampleRecord]| {
            select(records, KeepPolicy::FIRST_CORRECT).first().map(|&i| records[i].completion.clone())
        };
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
        assert_eq!(select(&records, KeepPolicy::FIRST_CORRECT), [2]);
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
            seed_judge_fraction: 0.0,
            train_per_length: 1,
            eval_per_length: 1,
        };
        let task = Addition::new(&config, 1);
        let p = problem();
        let hinted = task.hinted_prompt(&p);
        assert_eq!(hinted, "345+789|1134\n");
        let v = task.verifier();
        let records = judge_completions(&v, &p, &hinted, &[completion(&scratchpad(345, 789))], true);
        let kept = &records[select(&records, KeepPolicy::FIRST_CORRECT)[0]];
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
                .map(|&i| records[i].completion.as_str())
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

    #[test]
    fn few_shot_examples_are_shown_when_sampling_but_never_saved() {
        let task = crate::strategy::testing::arith_word(3, 2, 0.5, 7);
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
        let outcome = collect(&mut Star::new(config), &task, &mut generator);
        // Nothing is solved, so each problem is sampled twice: plainly, then with the hint.
        assert_eq!(generator.requests.len(), 6);
        assert!(generator.requests.iter().all(|r| r.context == shots));
        assert!(outcome.sets[0].examples.is_empty());
        let plain: crate::config::StarConfig =
            toml::from_str("samples-per-problem = 2\ntemperature = 0.7\nmax-new-tokens = 8\nrationalization = false")
                .unwrap();
        let mut generator = Recorder::default();
        collect(&mut Star::new(plain), &task, &mut generator);
        assert!(generator.requests.iter().all(|r| r.context.is_empty()));
    }

    fn collect(star: &mut Star, task: &dyn Task, generator: &mut Recorder) -> Collected {
        let mut cx = Context { task, generator, judge: None, seed: 1, reporter: &NullReporter };
        star.collect(&mut cx).expect("collect")
    }
}
